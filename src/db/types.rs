//! Domain types as database columns: each is stored as text and decoded
//! (parsed) once, where it leaves the database, so no query result is
//! re-parsed from strings further up.

use sqlx::any::{Any, AnyTypeInfo};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use crate::domain::{
    AccountId, AccountKind, AccountStatus, MailboxAddress, ProviderKind, TenantId,
};

/// A text column that parses into `$ty` with `$parse` and is written as
/// `$text`.
macro_rules! text_column {
    ($ty:ty, $parse:expr, $text:expr) => {
        impl Type<Any> for $ty {
            fn type_info() -> AnyTypeInfo {
                <String as Type<Any>>::type_info()
            }

            fn compatible(ty: &AnyTypeInfo) -> bool {
                <String as Type<Any>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Any> for $ty {
            fn decode(value: <Any as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let raw = <String as Decode<Any>>::decode(value)?;
                let parse: fn(&str) -> Result<$ty, String> = $parse;
                parse(&raw).map_err(Into::into)
            }
        }

        impl<'q> Encode<'q, Any> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                let text: fn(&$ty) -> String = $text;
                <String as Encode<Any>>::encode(text(self), buf)
            }
        }
    };
}

text_column!(
    AccountId,
    |raw| AccountId::parse(raw).map_err(|e| format!("accounts.id {raw:?}: {e}")),
    |v| v.to_string()
);
text_column!(
    TenantId,
    |raw| TenantId::parse(raw).map_err(|e| format!("tenant_id {raw:?}: {e}")),
    |v| v.as_str().to_owned()
);
text_column!(
    ProviderKind,
    |raw| ProviderKind::parse(raw).ok_or_else(|| format!("unknown provider {raw:?} stored")),
    |v| v.as_str().to_owned()
);
text_column!(
    StoredProvider,
    |raw| Ok(match ProviderKind::parse(raw) {
        Some(kind) => StoredProvider::Known(kind),
        None => StoredProvider::Unknown(raw.to_owned()),
    }),
    |v| v.as_str().to_owned()
);

/// An account's provider as stored: one this release knows, or the name
/// of one it does not (written by another release): such a row still
/// reads, so one odd row cannot stop a sweep or a status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredProvider {
    Known(ProviderKind),
    Unknown(String),
}

impl StoredProvider {
    pub fn known(&self) -> Option<ProviderKind> {
        match self {
            StoredProvider::Known(kind) => Some(*kind),
            StoredProvider::Unknown(_) => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            StoredProvider::Known(kind) => kind.as_str(),
            StoredProvider::Unknown(name) => name,
        }
    }
}

impl std::fmt::Display for StoredProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
text_column!(
    AccountStatus,
    |raw| AccountStatus::parse(raw).ok_or_else(|| format!("unknown account status {raw:?} stored")),
    |v| v.as_str().to_owned()
);
text_column!(
    AccountKind,
    |raw| AccountKind::parse(raw).ok_or_else(|| format!("unknown account kind {raw:?} stored")),
    |v| v.as_str().to_owned()
);
text_column!(
    MailboxAddress,
    |raw| MailboxAddress::parse(raw).map_err(|e| format!("stored address {raw:?}: {e}")),
    |v| v.as_str().to_owned()
);
