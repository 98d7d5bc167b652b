//! The fake Microsoft's client assertions over real HTTP: a certificate
//! uploaded to the app and a federated identity credential authenticate a
//! refresh as Entra's do, and each flaw Entra refuses is refused with its
//! AADSTS code.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mailconnect_sandbox::*;
use serde_json::{json, Value};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cr3t~value";
const REDIRECT: &str = "http://127.0.0.1:9999/oauth/microsoft/callback";
const IMAP: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
const UPN: &str = "ops@contoso.com";
const CLUSTER: &str = "https://oidc.cluster.example/7f3c";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:mail:mailconnect";

async fn start() -> FakeMicrosoft {
    FakeMicrosoft::start(FakeMicrosoftConfig::new(CLIENT_ID, SECRET, REDIRECT))
        .await
        .unwrap()
}

fn in_a_year() -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::days(365)
}

/// A refresh of a fresh refresh token at `tenant`, authenticated with
/// `auth` (form fields, or an `Authorization` header as `("basic", secret)`).
async fn refresh_with(ms: &FakeMicrosoft, tenant: &str, auth: &[(&str, &str)]) -> (u16, Value) {
    let rt = ms.mint_refresh_token(UPN);
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("refresh_token", rt.as_str()),
        ("scope", IMAP),
    ];
    let mut request = reqwest::Client::new().post(ms.token_endpoint(tenant));
    for (k, v) in auth {
        match *k {
            "basic" => request = request.basic_auth(CLIENT_ID, Some(v)),
            _ => form.push((k, v)),
        }
    }
    let resp = request.form(&form).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The two fields of a JWT client assertion.
fn assertion_fields(assertion: &str) -> [(&str, &str); 2] {
    [
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ]
}

async fn refresh_asserting(ms: &FakeMicrosoft, tenant: &str, assertion: &str) -> (u16, Value) {
    refresh_with(ms, tenant, &assertion_fields(assertion)).await
}

/// The claims mailconnect's certificate assertion carries for `aud`.
fn claims_for(aud: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({
        "aud": aud,
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    })
}

/// PS256 naming `named_cert` by `x5t#S256`, signed with `signer`'s key.
fn sign_ps256(named_cert: &TestCertificate, signer: &TestCertificate, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::PS256);
    header.x5t_s256 = Some(named_cert.x5t_s256());
    sign(header, signer, claims)
}

fn sign(header: Header, signer: &TestCertificate, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(signer.key_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// `(status, error, error_codes[0], error_description)` of an answer.
fn refusal(answer: &(u16, Value)) -> (u16, &str, u64, &str) {
    let (status, v) = answer;
    (
        *status,
        v["error"].as_str().unwrap_or(""),
        v["error_codes"][0].as_u64().unwrap_or(0),
        v["error_description"].as_str().unwrap_or(""),
    )
}

/// Answered `invalid_client` (401) with AADSTS `code`, in words that start
/// with `words`.
fn assert_invalid_client(answer: &(u16, Value), code: u64, words: &str) {
    let (status, error, number, description) = refusal(answer);
    assert_eq!(
        (status, error, number),
        (401, "invalid_client", code),
        "{description}"
    );
    let prefix = format!("AADSTS{code}: {words}");
    assert!(description.starts_with(&prefix), "{description}");
}

#[tokio::test]
async fn a_refresh_authenticated_with_a_certificate_works_without_the_secret_and_is_recorded() {
    let ms = start().await;
    ms.set_secret_accepted(false);
    let cert = TestCertificate::new("mailconnect", in_a_year());
    ms.upload_certificate(cert.der());
    let url = ms.token_endpoint(WORK_TENANT_ID);

    let claims = claims_for(&url);
    let answer = refresh_asserting(&ms, WORK_TENANT_ID, &sign_ps256(&cert, &cert, &claims)).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert!(answer.1["access_token"].is_string());

    // RS256 naming the certificate by its legacy SHA-1 x5t passes too.
    let mut header = Header::new(Algorithm::RS256);
    header.x5t = Some(cert.x5t());
    let answer =
        refresh_asserting(&ms, WORK_TENANT_ID, &sign(header, &cert, &claims_for(&url))).await;
    assert_eq!(answer.0, 200, "{}", answer.1);

    let seen = ms.assertions();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0],
        SeenAssertion {
            alg: "PS256".into(),
            x5t_s256: Some(cert.x5t_s256()),
            x5t: None,
            kid: None,
            aud: vec![url.clone()],
            iss: Some(CLIENT_ID.into()),
            sub: Some(CLIENT_ID.into()),
            jti: claims["jti"].as_str().map(str::to_string),
            lifetime_secs: Some(600),
            replayed: false,
            token_url: url.clone(),
            refused: None,
        }
    );
    assert_eq!(
        (
            seen[1].alg.as_str(),
            seen[1].x5t.as_deref(),
            seen[1].x5t_s256.as_deref()
        ),
        ("RS256", Some(cert.x5t().as_str()), None)
    );
}

#[tokio::test]
async fn a_replayed_jti_and_a_long_lifetime_pass_as_at_entra_and_are_marked() {
    let ms = start().await;
    let cert = TestCertificate::new("mailconnect", in_a_year());
    ms.upload_certificate(cert.der());
    let url = ms.token_endpoint(WORK_TENANT_ID);
    let mut claims = claims_for(&url);
    claims["exp"] = json!(claims["iat"].as_i64().unwrap() + 3600);
    let assertion = sign_ps256(&cert, &cert, &claims);
    for _ in 0..2 {
        let answer = refresh_asserting(&ms, WORK_TENANT_ID, &assertion).await;
        assert_eq!(answer.0, 200, "{}", answer.1);
    }
    let seen = ms.assertions();
    assert_eq!(
        seen.iter()
            .map(|a| (a.replayed, a.lifetime_secs))
            .collect::<Vec<_>>(),
        [(false, Some(3600)), (true, Some(3600))]
    );
}

#[tokio::test]
async fn each_flaw_of_a_certificate_assertion_is_refused_with_its_aadsts_code() {
    let ms = start().await;
    let cert = TestCertificate::new("mailconnect", in_a_year());
    let stranger = TestCertificate::new("not uploaded", in_a_year());
    ms.upload_certificate(cert.der());
    let url = ms.token_endpoint(WORK_TENANT_ID);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims_for(&url);
        change(&mut claims);
        sign_ps256(&cert, &cert, &claims)
    };
    let now = Utc::now().timestamp();
    let mut hs256 = Header::new(Algorithm::HS256);
    hs256.x5t_s256 = Some(cert.x5t_s256());
    let hs256 = jsonwebtoken::encode(
        &hs256,
        &claims_for(&url),
        &EncodingKey::from_secret(b"a shared secret"),
    )
    .unwrap();
    let unnamed = sign(Header::new(Algorithm::PS256), &cert, &claims_for(&url));

    let cases: [(&str, String, u64, &str); 11] = [
        ("signed by another key", sign_ps256(&cert, &stranger, &claims_for(&url)), 700027, "Client assertion failed signature validation."),
        ("a certificate never uploaded", sign_ps256(&stranger, &stranger, &claims_for(&url)), 700027, "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found."),
        ("aud another tenant's token URL", with(&|c| c["aud"] = json!(ms.token_endpoint("common"))), 700023, "Client assertion audience claim does not match Realm issuer."),
        ("aud the issuer", with(&|c| c["aud"] = json!(format!("{}/{WORK_TENANT_ID}/v2.0", ms.base_url()))), 700023, "Client assertion audience claim does not match Realm issuer."),
        ("iss not the client id", with(&|c| c["iss"] = json!("someone-else")), 700021, "Client assertion application identifier doesn't match 'client_id' parameter."),
        ("sub not the client id", with(&|c| c["sub"] = json!("someone-else")), 700021, "Client assertion application identifier doesn't match 'client_id' parameter."),
        ("expired", with(&|c| { c["iat"] = json!(now - 660); c["nbf"] = json!(now - 660); c["exp"] = json!(now - 60) }), 700024, "Client assertion is not within its valid time range. Current time: "),
        ("not valid yet", with(&|c| c["nbf"] = json!(now + 300)), 700024, "Client assertion is not within its valid time range."),
        ("no exp", with(&|c| { c.as_object_mut().unwrap().remove("exp"); }), 700024, "Client assertion is not within its valid time range."),
        ("HS256", hs256, 5002738, "Invalid JWT token. 'HS256' is not a supported signature algorithm."),
        ("no thumbprint nor kid", unnamed, 5002723, "Invalid JWT token. No certificate SHA-1 thumbprint, certificate SHA-256 thumbprint, nor keyId specified in token header."),
    ];
    for (i, (why, assertion, code, words)) in cases.iter().enumerate() {
        let answer = refresh_asserting(&ms, WORK_TENANT_ID, assertion).await;
        assert_invalid_client(&answer, *code, words);
        let seen = ms.assertions();
        assert_eq!(seen.len(), i + 1, "{why}");
        assert_eq!(seen[i].refused, Some(*code as u32), "{why}");
    }

    // Neither a value that is no JWT nor an assertion of no type is read
    // (nor recorded): the request is malformed.
    let answer = refresh_asserting(&ms, WORK_TENANT_ID, "not-a-jwt").await;
    let (status, error, code, _) = refusal(&answer);
    assert_eq!((status, error, code), (400, "invalid_request", 50027));
    let answer = refresh_with(&ms, WORK_TENANT_ID, &[("client_assertion", &with(&|_| {}))]).await;
    let (status, error, code, description) = refusal(&answer);
    assert_eq!((status, error, code), (400, "invalid_request", 900144));
    assert!(
        description.contains("'client_assertion_type'"),
        "{description}"
    );
    assert_eq!(ms.assertions().len(), cases.len());
}

#[tokio::test]
async fn an_expired_certificate_no_longer_authenticates() {
    let ms = start().await;
    let expired = TestCertificate::new("mailconnect", Utc::now() - chrono::Duration::days(1));
    ms.upload_certificate(expired.der());
    let url = ms.token_endpoint(WORK_TENANT_ID);
    let answer = refresh_asserting(
        &ms,
        WORK_TENANT_ID,
        &sign_ps256(&expired, &expired, &claims_for(&url)),
    )
    .await;
    assert_invalid_client(
        &answer,
        700027,
        "The certificate with identifier used to sign the client assertion is expired on application. [Reason - The key used is expired.",
    );
    let description = refusal(&answer).3;
    let end = expired
        .not_after()
        .format("End=%m/%d/%Y %H:%M:%S")
        .to_string();
    assert!(description.contains(&end), "{description}");
}

#[tokio::test]
async fn a_secret_alongside_an_assertion_is_two_methods_at_once() {
    let ms = start().await;
    let cert = TestCertificate::new("mailconnect", in_a_year());
    ms.upload_certificate(cert.der());
    let assertion = sign_ps256(
        &cert,
        &cert,
        &claims_for(&ms.token_endpoint(WORK_TENANT_ID)),
    );
    let [kind, value] = assertion_fields(&assertion);
    for (secret, method) in [
        (("client_secret", SECRET), "client_secret_post"),
        (("basic", SECRET), "client_secret_basic"),
    ] {
        let answer = refresh_with(&ms, WORK_TENANT_ID, &[secret, kind, value]).await;
        let (status, error, code, description) = refusal(&answer);
        assert_eq!((status, error, code), (400, "invalid_request", 900023));
        assert!(
            description.contains(&format!("({method} and private_key_jwt were both used)")),
            "{description}"
        );
    }
    assert!(ms.assertions().is_empty(), "refused before it was read");
}

#[tokio::test]
async fn a_secret_is_refused_once_the_app_takes_it_no_more() {
    let ms = start().await;
    assert_eq!(
        refresh_with(&ms, "common", &[("client_secret", SECRET)])
            .await
            .0,
        200
    );
    ms.set_secret_accepted(false);
    for auth in [("client_secret", SECRET), ("basic", SECRET)] {
        let answer = refresh_with(&ms, "common", &[auth]).await;
        assert_invalid_client(&answer, 7000215, "Invalid client secret provided.");
    }
    ms.set_secret_accepted(true);
    assert_eq!(
        refresh_with(&ms, "common", &[("client_secret", SECRET)])
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_federated_token_authenticates_again_and_again_until_it_expires() {
    let ms = start().await;
    ms.set_secret_accepted(false);
    let cluster = FederatedIssuer::new(CLUSTER);
    ms.add_federated_credential(CLUSTER, SERVICE_ACCOUNT, cluster.jwks());
    let token = cluster.mint(
        SERVICE_ACCOUNT,
        TOKEN_EXCHANGE_AUDIENCE,
        Duration::from_secs(3600),
    );
    for _ in 0..2 {
        let answer = refresh_asserting(&ms, WORK_TENANT_ID, &token).await;
        assert_eq!(answer.0, 200, "{}", answer.1);
    }
    let seen = ms.assertions();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].alg, "RS256");
    assert_eq!(seen[0].iss.as_deref(), Some(CLUSTER));
    assert_eq!(seen[0].aud, [TOKEN_EXCHANGE_AUDIENCE]);
    assert!(seen[0].kid.is_some() && seen[0].x5t_s256.is_none());
    assert_eq!((seen[1].replayed, seen[1].refused), (true, None));
}

#[tokio::test]
async fn a_federated_token_that_matches_no_credential_is_refused_with_its_aadsts_code() {
    let ms = start().await;
    let cluster = FederatedIssuer::new(CLUSTER);
    let token =
        |subject: &str, audience: &str| cluster.mint(subject, audience, Duration::from_secs(3600));
    let good = token(SERVICE_ACCOUNT, TOKEN_EXCHANGE_AUDIENCE);
    let answer = refresh_asserting(&ms, WORK_TENANT_ID, &good).await;
    assert_invalid_client(&answer, 70021, &format!("No matching federated identity record found for presented assertion. Assertion Issuer: '{CLUSTER}'. Assertion Subject: '{SERVICE_ACCOUNT}'."));

    ms.add_federated_credential(CLUSTER, SERVICE_ACCOUNT, cluster.jwks());
    let now = Utc::now().timestamp();
    let impostor = FederatedIssuer::new(CLUSTER);
    let other_cluster = FederatedIssuer::new("https://oidc.other.example/1");
    let mut tampered = good.clone();
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    let cases: [(String, u64, String); 6] = [
        (other_cluster.mint(SERVICE_ACCOUNT, TOKEN_EXCHANGE_AUDIENCE, Duration::from_secs(60)), 700211, "No matching federated identity record found for presented assertion issuer 'https://oidc.other.example/1'.".into()),
        (token("system:serviceaccount:mail:other", TOKEN_EXCHANGE_AUDIENCE), 700213, "No matching federated identity record found for presented assertion subject 'system:serviceaccount:mail:other'.".into()),
        (token(SERVICE_ACCOUNT, "api://AzureADMyOrg"), 700212, "No matching federated identity record found for presented assertion audience 'api://AzureADMyOrg'.".into()),
        (cluster.sign(&json!({"iss": CLUSTER, "sub": SERVICE_ACCOUNT, "aud": [TOKEN_EXCHANGE_AUDIENCE], "iat": now - 7200, "exp": now - 3600})), 700024, "Client assertion is not within its valid time range.".into()),
        (impostor.mint(SERVICE_ACCOUNT, TOKEN_EXCHANGE_AUDIENCE, Duration::from_secs(60)), 700027, "Client assertion failed signature validation.".into()),
        (tampered, 700027, "Client assertion failed signature validation.".into()),
    ];
    for (assertion, code, words) in &cases {
        let answer = refresh_asserting(&ms, WORK_TENANT_ID, assertion).await;
        assert_invalid_client(&answer, *code, words);
    }
    assert_eq!(refresh_asserting(&ms, WORK_TENANT_ID, &good).await.0, 200);
}
