//! Resolving an Export's Secret references into [`Credentials`]. Where
//! Secrets come from is the caller's business ([`SecretSource`]):
//! standalone mode reads them from the manifests folder
//! ([`ManifestSecrets`]), cluster mode from the apiserver.

use std::collections::BTreeMap;

use crds::v1alpha1::{ExportSpec, SecretKeyRef};
use k8s_openapi::api::core::v1::Secret;

use super::{Credentials, ExportError};

/// Where Secrets are read from.
pub trait SecretSource {
    /// The keys and decoded values of Secret `namespace/name`, or `None`
    /// if there is no such Secret.
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
}

/// Secrets given as `kind: Secret` manifests: `data` (base64) and
/// `stringData` (text, which wins on a shared key, as the apiserver does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestSecrets {
    secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

impl ManifestSecrets {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let secrets = secrets
            .into_iter()
            .map(|secret| {
                let namespace = secret
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| crds::manifest::DEFAULT_NAMESPACE.to_owned());
                let name = secret.metadata.name.clone().unwrap_or_default();
                let mut values: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                for (k, v) in secret.string_data.iter().flatten() {
                    values.insert(k.clone(), v.clone().into_bytes());
                }
                ((namespace, name), values)
            })
            .collect();
        Self { secrets }
    }
}

impl SecretSource for ManifestSecrets {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

/// Reads every Secret `spec` refers to, from `namespace`.
pub fn resolve_credentials(
    namespace: &str,
    spec: &ExportSpec,
    source: &dyn SecretSource,
) -> Result<Credentials, ExportError> {
    let otlp = &spec.destination.otlp;
    let secret = |name: &str| {
        source
            .secret(namespace, name)
            .ok_or_else(|| ExportError::MissingSecret {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    };
    let key = |reference: &SecretKeyRef| {
        secret(&reference.name)?
            .remove(&reference.key)
            .ok_or_else(|| ExportError::MissingSecretKey {
                namespace: namespace.to_owned(),
                name: reference.name.clone(),
                key: reference.key.clone(),
            })
    };
    let mut credentials = Credentials::default();
    if let Some(headers) = &otlp.headers_from {
        for (header, value) in secret(&headers.name)? {
            let value = String::from_utf8(value).map_err(|_| ExportError::SecretNotText {
                namespace: namespace.to_owned(),
                name: headers.name.clone(),
                key: header.clone(),
            })?;
            credentials.headers.push((header, value));
        }
    }
    if let Some(tls) = &otlp.tls {
        credentials.ca_pem = tls.ca_from.as_ref().map(key).transpose()?;
        if let (Some(cert), Some(private)) = (&tls.cert_from, &tls.key_from) {
            credentials.client_identity = Some((key(cert)?, key(private)?));
        }
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(yaml: &str) -> ManifestSecrets {
        let secret: Secret = serde_yaml::from_str(yaml).expect("a Secret");
        ManifestSecrets::new([&secret])
    }

    fn export_spec(destination: &str) -> ExportSpec {
        serde_yaml::from_str(&format!(
            "tables: [t]\ndestination:\n  otlp:\n{destination}\nmapping: {{}}\n"
        ))
        .expect("an Export spec")
    }

    #[test]
    fn headers_and_tls_material_come_from_the_secrets() {
        let source = secrets(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: otlp, namespace: shop}\n\
             data: {ca.crt: Q0EgUEVN}\nstringData: {authorization: Bearer t0k}\n",
        );
        let spec = export_spec(
            "    endpoint: https://otlp.example.com\n    protocol: http\n    signal: logs\n\
             \x20   headersFrom: {name: otlp}\n    tls: {caFrom: {name: otlp, key: ca.crt}}",
        );
        let credentials = resolve_credentials("shop", &spec, &source).expect("all there");
        assert_eq!(
            credentials.headers,
            vec![
                ("authorization".to_owned(), "Bearer t0k".to_owned()),
                ("ca.crt".to_owned(), "CA PEM".to_owned())
            ]
        );
        assert_eq!(credentials.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert!(
            !format!("{credentials:?}").contains("t0k"),
            "no secret in Debug"
        );

        let error = resolve_credentials("default", &spec, &source).expect_err("other namespace");
        assert_eq!(error.to_string(), "Secret default/otlp does not exist");
        let wrong_key = export_spec(
            "    endpoint: https://otlp.example.com\n    protocol: grpc\n    signal: logs\n\
             \x20   tls: {caFrom: {name: otlp, key: tls.crt}}",
        );
        let error = resolve_credentials("shop", &wrong_key, &source).expect_err("no such key");
        assert_eq!(error.to_string(), "Secret shop/otlp has no key \"tls.crt\"");
    }
}
