//! Registry credentials as docker finds them: `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`, with `credHelpers` and `credsStore` run through the
//! `docker_credential` crate. No credentials found means anonymous access.

use std::path::PathBuf;

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_distribution::secrets::RegistryAuth;

use super::PullError;

/// The key docker stores Docker Hub's credentials under (`docker login` writes it).
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for one registry, and where they came from (for error messages: never the
/// secret itself).
#[derive(Clone)]
pub(crate) struct Credentials {
    pub auth: RegistryAuth,
    /// `None` when anonymous.
    pub user: Option<String>,
    /// The config file that was read (or would have been).
    pub config: PathBuf,
    /// The credential helper that answered, if one did.
    pub helper: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("config", &self.config)
            .field("helper", &self.helper)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Where they came from, for messages: "credential helper docker-credential-x (configured
    /// in F)" or the config file.
    pub fn origin(&self) -> String {
        match &self.helper {
            Some(h) => format!(
                "credential helper docker-credential-{h} (configured in {})",
                self.config.display()
            ),
            None => self.config.display().to_string(),
        }
    }
}

/// The directory docker reads `config.json` from.
pub(crate) fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    home.join(".docker")
}

/// Looks up the credentials for `registry` as written in the reference (`docker.io`,
/// `host:port`). Blocking: a credential helper is a process.
pub(crate) fn lookup(registry: &str) -> Result<Credentials, PullError> {
    let config = config_dir().join("config.json");
    let anonymous = Credentials {
        auth: RegistryAuth::Anonymous,
        user: None,
        config: config.clone(),
        helper: None,
    };
    let text = match std::fs::read(&config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(anonymous),
        Err(source) => {
            return Err(PullError::ReadCredentials {
                config,
                source: source.into(),
            })
        }
    };
    let server = if registry == "docker.io" || registry == "index.docker.io" {
        DOCKER_HUB_KEY
    } else {
        registry
    };
    let helper = helper_for(&text, server);
    let found = docker_credential::get_credential_from_reader(text.as_slice(), server);
    let fail = |what: String| PullError::ReadCredentials {
        config: config.clone(),
        source: what.into(),
    };
    match found {
        Ok(DockerCredential::UsernamePassword(user, password)) => Ok(Credentials {
            auth: RegistryAuth::Basic(user.clone(), password),
            user: Some(user),
            config,
            helper,
        }),
        Ok(DockerCredential::IdentityToken(_)) => {
            // An OAuth2 refresh token: oci-distribution has no way to use one.
            tracing::warn!(
                registry,
                config = %config.display(),
                "ignoring an identity token (not supported): pulling anonymously"
            );
            Ok(anonymous)
        }
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(anonymous),
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if stdout.contains("credentials not found") =>
        {
            Ok(anonymous)
        }
        Err(CredentialRetrievalError::HelperFailure { helper, .. }) => Err(fail(format!(
            "credential helper docker-credential-{helper} failed for {server}"
        ))),
        Err(CredentialRetrievalError::HelperCommunicationError) => Err(fail(format!(
            "cannot run credential helper docker-credential-{} for {server}",
            helper.as_deref().unwrap_or("?")
        ))),
        Err(CredentialRetrievalError::MalformedHelperResponse) => Err(fail(format!(
            "credential helper docker-credential-{} gave a malformed answer for {server}",
            helper.as_deref().unwrap_or("?")
        ))),
        Err(CredentialRetrievalError::ConfigReadError) => {
            Err(fail("it is not a valid docker config.json".to_owned()))
        }
        Err(e) => Err(fail(format!("the entry for {server}: {e}"))),
    }
}

/// The helper docker would run for `server`: its `credHelpers` entry, else `credsStore`.
fn helper_for(config: &[u8], server: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let named = |s: Option<&serde_json::Value>| {
        s.and_then(|h| h.as_str())
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
    };
    named(v.get("credHelpers").and_then(|h| h.get(server))).or_else(|| {
        // Entries in `auths` come first, as in docker_credential.
        let has_auth = v.get("auths").and_then(|a| a.get(server)).is_some();
        if has_auth {
            None
        } else {
            named(v.get("credsStore"))
        }
    })
}
