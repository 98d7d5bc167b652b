//! `admin_consents`: the Microsoft directory whose admin consented for each
//! tenant (one at a time; a new consent replaces it).

use super::Db;

/// A tenant's recorded admin consent.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AdminConsent {
    pub directory: String,
    pub granted_at: i64,
    pub granted_by: String,
}

/// The tenant's admin consent, if one was recorded.
pub async fn get(db: &Db, tenant_id: &str) -> sqlx::Result<Option<AdminConsent>> {
    sqlx::query_as(
        "SELECT directory, granted_at, granted_by FROM admin_consents WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(&db.pool)
    .await
}

/// Records (or replaces) the tenant's admin consent.
pub async fn record<'e, E>(conn: E, tenant_id: &str, consent: &AdminConsent) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO admin_consents (tenant_id, directory, granted_at, granted_by)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id) DO UPDATE
         SET directory = excluded.directory, granted_at = excluded.granted_at,
             granted_by = excluded.granted_by",
    )
    .bind(tenant_id)
    .bind(&consent.directory)
    .bind(consent.granted_at)
    .bind(&consent.granted_by)
    .execute(conn)
    .await?;
    Ok(())
}
