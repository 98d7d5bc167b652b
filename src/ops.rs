//! Operator tasks behind the CLI: key rotation and listing accounts.

use serde::Serialize;
use sqlx::FromRow;

use crate::crypto::{Column, CryptoError, Keyring};
use crate::db::Db;

/// Columns of `accounts` that hold sealed secrets.

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct RotationReport {
    pub accounts_scanned: u64,
    pub reencrypted: u64,
    pub already_current: u64,
    /// Sealed under a key id that is not configured, or tampered: left as
    /// they are, and named in the log.
    pub unreadable: u64,
    /// Changed by the service between read and write (a refresh): the new
    /// value is already under the current key.
    pub skipped_concurrent: u64,
    /// Stopped at the `limit` before the end; run again to go on.
    pub incomplete: bool,
}

#[derive(FromRow)]
struct SealedRow {
    id: String,
    access_token_enc: Option<String>,
    refresh_token_enc: Option<String>,
    password_enc: Option<String>,
}

/// Re-encrypts every stored secret under the key ring's first key: the
/// accounts' tokens and passwords, then the app tokens.
///
/// Resumable: values already under the first key are left alone, so a run
/// that was interrupted (or stopped by `limit` re-encryptions) is simply
/// run again. Each value is replaced only if it is still the value read,
/// so a refresh that wrote meanwhile is never overwritten.
pub async fn rotate_keys(
    db: &Db,
    keys: &Keyring,
    limit: Option<u64>,
) -> anyhow::Result<RotationReport> {
    let mut report = RotationReport::default();
    let mut cursor = String::new();
    loop {
        let rows: Vec<SealedRow> = sqlx::query_as(
            "SELECT id, access_token_enc, refresh_token_enc, password_enc FROM accounts
             WHERE id > $1 ORDER BY id LIMIT 500",
        )
        .bind(&cursor)
        .fetch_all(&db.pool)
        .await?;
        let Some(last) = rows.last() else {
            break;
        };
        cursor = last.id.clone();
        let mut tx = db.pool.begin().await?;
        for row in &rows {
            report.accounts_scanned += 1;
            let values = [
                &row.access_token_enc,
                &row.refresh_token_enc,
                &row.password_enc,
            ];
            for ((sealed_as, column), value) in Column::ACCOUNT_SECRETS.iter().zip(values) {
                let Some(sealed) = value else { continue };
                if keys.is_current(sealed) {
                    report.already_current += 1;
                    continue;
                }
                if limit.is_some_and(|l| report.reencrypted >= l) {
                    report.incomplete = true;
                    tx.commit().await?;
                    return Ok(report);
                }
                let plain = match keys.open_for(*sealed_as, &row.id, sealed) {
                    Ok(p) => p,
                    Err(
                        e @ (CryptoError::UnknownKey(_)
                        | CryptoError::Tampered
                        | CryptoError::Malformed),
                    ) => {
                        tracing::warn!(account_id = %row.id, column, error = %e, "cannot re-encrypt");
                        report.unreadable += 1;
                        continue;
                    }
                };
                let resealed = keys.seal_for(*sealed_as, &row.id, &plain);
                let done = sqlx::query(&format!(
                    "UPDATE accounts SET {column} = $1 WHERE id = $2 AND {column} = $3"
                ))
                .bind(&resealed)
                .bind(&row.id)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 1 {
                    report.reencrypted += 1;
                } else {
                    report.skipped_concurrent += 1;
                }
            }
        }
        tx.commit().await?;
    }
    // The app tokens, one per Microsoft directory (sealed with the directory
    // as the row): few, so one pass. One the key ring cannot open is only
    // counted: the next token request replaces it anyway.
    let tokens: Vec<(String, String)> = sqlx::query_as(
        "SELECT directory, access_token_enc FROM app_tokens WHERE access_token_enc IS NOT NULL",
    )
    .fetch_all(&db.pool)
    .await?;
    for (directory, sealed) in tokens {
        if keys.is_current(&sealed) {
            report.already_current += 1;
            continue;
        }
        if limit.is_some_and(|l| report.reencrypted >= l) {
            report.incomplete = true;
            return Ok(report);
        }
        let Ok(plain) = keys.open_for(Column::AppToken, &directory, &sealed) else {
            tracing::warn!(directory, "cannot re-encrypt the app token");
            report.unreadable += 1;
            continue;
        };
        let resealed = keys.seal_for(Column::AppToken, &directory, &plain);
        let done = sqlx::query(
            "UPDATE app_tokens SET access_token_enc = $1 WHERE directory = $2 AND access_token_enc = $3",
        )
        .bind(&resealed)
        .bind(&directory)
        .bind(&sealed)
        .execute(&db.pool)
        .await?;
        if done.rows_affected() == 1 {
            report.reencrypted += 1;
        } else {
            report.skipped_concurrent += 1;
        }
    }
    Ok(report)
}

/// One account as `accounts list` shows it: no secret, no ciphertext.
#[derive(Debug, FromRow, Serialize)]
pub struct AccountSummary {
    pub id: String,
    pub tenant_id: String,
    pub provider: String,
    pub email: String,
    pub status: String,
    /// `delegated`, `shared` or `app`.
    pub kind: String,
    /// A `shared` mailbox's delegate.
    pub via_account_id: Option<String>,
    /// An `app` mailbox's Microsoft directory.
    pub directory: Option<String>,
    pub token_expires_at: Option<i64>,
    pub last_refresh_at: Option<i64>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
}

pub async fn list_accounts(
    db: &Db,
    tenant: Option<&str>,
    status: Option<&str>,
) -> sqlx::Result<Vec<AccountSummary>> {
    sqlx::query_as(
        "SELECT id, tenant_id, provider, email, status, kind, via_account_id, directory,
                token_expires_at, last_refresh_at,
                consecutive_failures, last_error
         FROM accounts
         WHERE ($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR status = $2)
         ORDER BY tenant_id, email",
    )
    .bind(tenant)
    .bind(status)
    .fetch_all(&db.pool)
    .await
}

/// One provider's credential as `mailconnect credentials show` prints it:
/// never the secret or the key, only what identifies it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CredentialLine {
    pub provider: &'static str,
    /// `secret`, `certificate`, `federated` or `key`.
    pub kind: &'static str,
    /// A certificate's SHA-1 thumbprint (as Entra shows it), a key's RFC
    /// 7638 thumbprint (its `kid`), else empty.
    pub thumbprint: String,
    /// A certificate's `x5t#S256`, else empty.
    pub x5t_s256: String,
    pub expires_at: Option<String>,
}

/// The configured providers' credentials.
pub fn show_credentials(
    providers: &[crate::oauth::registry::ProviderConfig],
) -> Vec<CredentialLine> {
    use crate::oauth::credential::Credential;
    providers
        .iter()
        .map(|p| {
            let credential = p.credential();
            let (thumbprint, x5t_s256) = match credential {
                Credential::Certificate(c) => (c.sha1_thumbprint.clone(), c.x5t_s256.clone()),
                // A key's RFC 7638 thumbprint: its `kid`.
                Credential::Key(_) => (
                    credential
                        .public_jwk()
                        .map(|(kid, _)| kid.to_owned())
                        .unwrap_or_default(),
                    String::new(),
                ),
                _ => (String::new(), String::new()),
            };
            CredentialLine {
                provider: p.kind().as_str(),
                kind: credential.kind(),
                thumbprint,
                x5t_s256,
                expires_at: credential.expires_at().map(crate::rfc3339),
            }
        })
        .collect()
}

/// What `mailconnect credentials new-certificate` made.
#[derive(Debug)]
pub struct NewCertificate {
    /// The certificate alone (PEM), what the app registration takes.
    pub certificate_pem: String,
    pub sha1_thumbprint: String,
    pub x5t_s256: String,
    pub not_after: i64,
}

/// Makes a new RSA key (3072 bits) and a self-signed certificate valid for
/// `days`, and writes both to `out` (mode 0600, never over an existing
/// file): the file `MICROSOFT_OAUTH_CLIENT_CERTIFICATE` names.
pub fn new_certificate(
    days: u32,
    subject: &str,
    out: &std::path::Path,
) -> anyhow::Result<NewCertificate> {
    use anyhow::Context;
    use rsa::pkcs8::EncodePrivateKey;
    anyhow::ensure!(
        (1..=3650).contains(&days),
        "--days must be between 1 and 3650"
    );
    let key =
        rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 3072).context("generating an RSA key")?;
    let key_pem = key
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .context("encoding the key")?;
    let pair = rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256)
        .context("loading the key")?;
    let now = crate::now();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject);
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now - 300)?;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now + i64::from(days) * 86_400)?;
    let cert = params
        .self_signed(&pair)
        .context("signing the certificate")?;
    let combined = format!("{}{}", cert.pem(), key_pem.as_str());
    let loaded = crate::oauth::credential::Certificate::from_pem(&combined, now)
        .map_err(|e| anyhow::anyhow!("the new certificate does not load: {e}"))?;
    write_private(out, &combined)?;
    Ok(NewCertificate {
        certificate_pem: cert.pem(),
        sha1_thumbprint: loaded.sha1_thumbprint.clone(),
        x5t_s256: loaded.x5t_s256.clone(),
        not_after: loaded.not_after,
    })
}

/// Writes a new file only its owner can read.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot create {} ({e}); it is never overwritten",
            path.display()
        )
    })?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
