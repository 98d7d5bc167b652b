//! Microsoft's own answers for the AADSTS errors tests ask the fake to play
//! ([`crate::Fault::Aadsts`] at the token endpoint,
//! [`crate::FakeMicrosoft::fail_next_authorize`] at authorize): one table,
//! [`AADSTS_ERRORS`], with for each code the OAuth `error`, the `suberror`,
//! the HTTP status, the `error` of an authorize redirect and Microsoft's
//! words. The fake's own refusals with these codes (an expired or wrong
//! secret, a client assertion Entra would refuse, missing or declined
//! consent, a revoked or idle refresh token, an app with no service
//! principal) take their shape from here too, so the two never disagree.
//!
//! Microsoft documents the codes and their words
//! (<https://learn.microsoft.com/entra/identity-platform/reference-error-codes>)
//! but not which `error` and `suberror` each comes with; those are taken from
//! bodies its token endpoint really sent, quoted in issues and recordings,
//! cited row by row. A row marked "inferred" has no such body behind it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// How Microsoft answers one AADSTS error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AadstsError {
    /// The number after `AADSTS`, also the one entry of `error_codes`.
    pub code: u32,
    /// The OAuth `error` of the token endpoint's answer.
    pub error: &'static str,
    /// The `suberror` Microsoft adds to it, when it adds one.
    pub suberror: Option<&'static str>,
    /// The HTTP status of the token endpoint's answer.
    pub status: StatusCode,
    /// The `error` of the redirect when the authorize endpoint refuses with
    /// this code; `None` for a code Microsoft only sends to the token
    /// endpoint (or shows on its own error page, never redirecting).
    pub authorize_error: Option<&'static str>,
    /// Microsoft's words after `AADSTSnnnn: `, with `{client_id}`, `{app}`
    /// and `{tenant}` for the values it names ([`Self::describe`]).
    pub description: &'static str,
}

/// AADSTS50196 (a client request loop). For the client credentials grant
/// Microsoft does not say it: it answers a bare 429 instead.
pub const LOOP_DETECTED: u32 = 50196;

const fn row(
    code: u32,
    status: StatusCode,
    error: &'static str,
    suberror: Option<&'static str>,
    authorize_error: Option<&'static str>,
    description: &'static str,
) -> AadstsError {
    AadstsError {
        code,
        error,
        suberror,
        status,
        authorize_error,
        description,
    }
}

const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;

/// The AADSTS errors the fake can play, by code.
#[rustfmt::skip]
pub const AADSTS_ERRORS: &[AadstsError] = &[
    // Token body: MicrosoftDocs/azure-docs#39189, O365/python-o365#323 (invalid_grant + consent_required); prompt=none redirect: interaction_required ("another authentication step or consent is required", v2-oauth2-auth-code-flow, authorize error table).
    row(65001, BAD_REQUEST, "invalid_grant", Some("consent_required"), Some("interaction_required"), "The user or administrator has not consented to use the application with ID '{client_id}' named '{app}'. Send an interactive authorization request for this user and resource."),
    // Redirect: access_denied, "resource owner denied consent" (v2-oauth2-auth-code-flow); words: reference-error-codes. Token side inferred, shaped like 65001.
    row(65004, BAD_REQUEST, "invalid_grant", Some("consent_required"), Some("access_denied"), "User declined to consent to access the app."),
    // Words: MS blog "Receiving AADSTS90094: The grant requires admin permission" (aaddevsup, 2018); redirect after "Return to the application without granting consent": access_denied, as app_access.rs answers at admin consent. Token side inferred, shaped like 65001.
    row(90094, BAD_REQUEST, "invalid_grant", Some("consent_required"), Some("access_denied"), "The grant requires admin permission."),
    // Redirect: error=invalid_request&error_description=AADSTS90008… (snok/django-auth-adfs#218). Token side inferred, shaped like 65001.
    row(90008, BAD_REQUEST, "invalid_grant", Some("consent_required"), Some("invalid_request"), "The user or administrator has not consented to use the application with ID '{client_id}'({app}). This happened because application is misconfigured: it must require access to Microsoft Graph by specifying at least 'Sign in and read user profile' permission."),
    // Token body: Azure/azure-cli#14244, mspnp/identity-reference-architectures#9 (invalid_grant); suberror bad_token: msal-node's InteractionRequiredAuthError in microsoft/foundry-dev-tools#707.
    row(700082, BAD_REQUEST, "invalid_grant", Some("bad_token"), None, "The refresh token has expired due to inactivity."),
    // Token body: a recorded v2.0 refresh_token answer of 2021-10-29 in an Azure SDK (msal-node) test recording (invalid_grant + bad_token).
    row(50173, BAD_REQUEST, "invalid_grant", Some("bad_token"), None, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password."),
    // Token body: microsoft/vscode#240536 (v2.0 refresh, 2025: invalid_grant + basic_action); AzureAD/microsoft-authentication-library-for-objc#1391. Redirect (prompt=none): interaction_required (authorize error table).
    row(50076, BAD_REQUEST, "invalid_grant", Some("basic_action"), Some("interaction_required"), "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000002-0000-0ff1-ce00-000000000000'."),
    // Token body: the error example of Microsoft's v2.0 on-behalf-of doc (interaction_required); juunas11/aspnetcore2aadauth#6 (interaction_required + basic_action).
    row(50079, BAD_REQUEST, "interaction_required", Some("basic_action"), Some("interaction_required"), "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access '00000002-0000-0ff1-ce00-000000000000'."),
    // Token body: Azure/azure-sdk-for-cpp sdk/identity/azure-identity/TROUBLESHOOTING.md (2025: invalid_grant + message_only, plus a claims challenge the fake leaves out). Redirect: access_denied (not checked against a captured redirect).
    row(53003, BAD_REQUEST, "invalid_grant", Some("message_only"), Some("access_denied"), "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance."),
    // Token body: Azure/azure-cli#18945; canonical/authd#814 (v2.0 refresh, 2025): invalid_grant.
    row(50057, BAD_REQUEST, "invalid_grant", None, None, "The user account is disabled."),
    // Words: AzureAD/microsoft-authentication-library-for-python#211. invalid_grant as mail clients report it on refresh; Microsoft's HDInsight troubleshooting page shows a 2019 v1.0 password grant answering unauthorized_client.
    row(50053, BAD_REQUEST, "invalid_grant", None, None, "The account is locked, you've tried to sign in too many times with an incorrect user ID or password."),
    // Token body: BingAds/BingAds-Python-SDK#279 (invalid_grant).
    row(70000, BAD_REQUEST, "invalid_grant", None, None, "The provided value for the input parameter 'refresh_token' or 'assertion' is not valid."),
    // Token body: 401 invalid_client with these words (liprec/vsts-release-aas#119, 2023; microsoft/botframework-sdk#6221).
    row(7000222, UNAUTHORIZED, "invalid_client", None, None, "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."),
    // Token body: 401 invalid_client with these words (keycloak/keycloak#31294, v2.0, 2024).
    row(7000215, UNAUTHORIZED, "invalid_client", None, None, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
    // unauthorized_client: reference-error-codes ("UnauthorizedClient_DoesNotMatchRequest") and app_access.rs; at authorize an unknown app gets an error page, not a redirect.
    row(700016, BAD_REQUEST, "unauthorized_client", None, None, "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
    // invalid_request: microsoftgraph/aspnetcore-connect-sample#65 (the redirect's error); words: reference-error-codes.
    row(50194, BAD_REQUEST, "invalid_request", None, Some("invalid_request"), "Application '{client_id}'({app}) is not configured as a multi-tenant application. Usage of the /common endpoint is not supported for such applications created after '10/15/2018'. Use a tenant-specific endpoint or configure the application to be multi-tenant."),
    // Token body: AzureAD/microsoft-authentication-library-for-dotnet, tests/Microsoft.Identity.Test.Common/Core/Mocks/MockHelpers.cs (CreateInvalidClientResponseMessage, invalid_client).
    row(7000218, UNAUTHORIZED, "invalid_client", None, None, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."),
    // Client assertions (certificate and federated credentials), client_assertion.rs.
    // Words: Microsoft Learn, Azure Stack HCI troubleshooting ("exception: AADSTS700027: Client assertion failed signature validation"); invalid_client: recorded answers for an unregistered certificate ("The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., …]") and an expired one ("[Reason - The key used is expired., …]", Microsoft Learn's Azure Stack HCI and Entra Connect troubleshooting).
    row(700027, UNAUTHORIZED, "invalid_client", None, None, "Client assertion failed signature validation."),
    // Token body: MSAL.NET MockHelpers.cs (IdentifierMismatchError700021, captured 2023-12-11); words also in Microsoft Learn's Azure SDK for Java troubleshooting (iss and sub must both be the client id).
    row(700021, UNAUTHORIZED, "invalid_client", None, None, "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials ."),
    // Words: Microsoft Learn, Azure SDK for Java troubleshooting (ClientAssertionCredential). invalid_client inferred, like 700021 and 700024.
    row(700023, UNAUTHORIZED, "invalid_client", None, None, "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials ."),
    // Token body: MSAL.NET MockHelpers.cs (BadTimeRangeError700024); an AKS workload identity troubleshooting guide quoting a body (invalid_client, a Kubernetes token an hour old). The fake's refusals add the times.
    row(700024, UNAUTHORIZED, "invalid_client", None, None, "Client assertion is not within its valid time range."),
    // Token body: MSAL.NET MockHelpers.cs (BadCredMissingSha1Error5002723).
    row(5002723, UNAUTHORIZED, "invalid_client", None, None, "Invalid JWT token. No certificate SHA-1 thumbprint, certificate SHA-256 thumbprint, nor keyId specified in token header."),
    // Token body: MSAL.NET MockHelpers.cs (BadCredBadAlgError5002738, which names the algorithm and the supported ones; the fake's refusal does too).
    row(5002738, UNAUTHORIZED, "invalid_client", None, None, "Invalid JWT token. The token is not signed with a supported signature algorithm."),
    // Token body: MSAL.NET MockHelpers.cs (SendTenantIdInCredentialValueError50027, invalid_request).
    row(50027, BAD_REQUEST, "invalid_request", None, None, "JWT token is invalid or malformed."),
    // Words: Microsoft Learn, Azure DevOps workload identity errors ("… Assertion Issuer: '…'", a newer answer adds Subject and Audience). invalid_client inferred, like 700212; the fake sends it when the app has no federated credential at all.
    row(70021, UNAUTHORIZED, "invalid_client", None, None, "No matching federated identity record found for presented assertion."),
    // Words as reported for AKS and GitHub issuers ("… for presented assertion issuer '…'"). invalid_client inferred, like 700212.
    row(700211, UNAUTHORIZED, "invalid_client", None, None, "No matching federated identity record found for presented assertion issuer. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"),
    // Token body: 401 invalid_client (AthenZ/athenz, AzureAccessTokenProviderTest, recorded 2024-04-16), which names the audience.
    row(700212, UNAUTHORIZED, "invalid_client", None, None, "No matching federated identity record found for presented assertion audience. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"),
    // Words as reported for GitHub and Kubernetes subjects ("… for presented assertion subject '…'"). invalid_client inferred, like 700212.
    row(700213, UNAUTHORIZED, "invalid_client", None, None, "No matching federated identity record found for presented assertion subject. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"),
    // invalid_grant, "all flows": Microsoft's "What's new for authentication", March 2019 ("Looping clients will be interrupted"); MSAL.NET's throttling doc. Client credentials: loop_throttled_app.
    row(LOOP_DETECTED, BAD_REQUEST, "invalid_grant", None, None, "The server terminated an operation because it encountered a loop while processing a request."),
];

impl AadstsError {
    /// The row of `code`. Panics for a code [`AADSTS_ERRORS`] lacks: a test
    /// asked for an answer the fake cannot give faithfully.
    pub fn lookup(code: u32) -> &'static AadstsError {
        AADSTS_ERRORS
            .iter()
            .find(|e| e.code == code)
            .unwrap_or_else(|| {
                let known: Vec<String> = AADSTS_ERRORS.iter().map(|e| e.code.to_string()).collect();
                panic!(
                    "the sandbox has no answer for AADSTS{code}; it knows AADSTS {}",
                    known.join(", ")
                )
            })
    }

    /// The row of `code` as the authorize endpoint sends it. Panics for a
    /// code the table lacks, or one authorize never redirects with.
    pub fn lookup_at_authorize(code: u32) -> (&'static AadstsError, &'static str) {
        let row = Self::lookup(code);
        match row.authorize_error {
            Some(error) => (row, error),
            None => panic!(
                "Microsoft's authorize endpoint does not redirect with AADSTS{code} ({}): it is an answer of the token endpoint",
                row.error
            ),
        }
    }

    /// [`Self::description`] with the app's client id and name and the
    /// tenant path filled in.
    pub fn describe(&self, client_id: &str, app: &str, tenant: &str) -> String {
        self.description
            .replace("{client_id}", client_id)
            .replace("{app}", app)
            .replace("{tenant}", tenant)
    }
}

/// AADSTS50196 at the client credentials grant: Microsoft throttles a
/// looping daemon with `429 Too Many Requests`, `Retry-After: 60` and the
/// bare text "Too Many Requests" for a body, no JSON and no AADSTS code
/// (MSAL.NET's throttling doc; AzureAD/microsoft-authentication-library-for-dotnet#2855).
pub(crate) fn loop_throttled_app() -> Response {
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn every_code_has_one_row_and_its_words_name_only_what_describe_fills() {
        let mut codes: Vec<u32> = AADSTS_ERRORS.iter().map(|e| e.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), AADSTS_ERRORS.len(), "a code has two rows");
        for e in AADSTS_ERRORS {
            let text = e.describe("id", "app", "tenant");
            assert!(!text.contains('{') && !text.contains('}'), "{text}");
            assert!(!text.starts_with("AADSTS"), "the prefix is added: {text}");
        }
    }

    #[test]
    fn a_refused_client_is_a_401_and_nothing_else_is() {
        for e in AADSTS_ERRORS {
            let expected = if e.error == "invalid_client" {
                401
            } else {
                400
            };
            assert_eq!(e.status.as_u16(), expected, "AADSTS{}", e.code);
        }
        assert_eq!(
            AadstsError::lookup(7000222).status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    #[should_panic(expected = "no answer for AADSTS12345")]
    fn an_unknown_code_panics() {
        AadstsError::lookup(12345);
    }

    #[test]
    #[should_panic(expected = "does not redirect with AADSTS7000222")]
    fn a_token_endpoint_code_is_not_an_authorize_answer() {
        AadstsError::lookup_at_authorize(7000222);
    }

    #[test]
    fn the_loop_of_a_daemon_is_a_bare_429() {
        let resp = loop_throttled_app();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "60");
    }
}
