//! A throwaway certificate chain, so the simulator can serve HTTPS for `stellar.ca_file`.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use super::error::SimError;

/// A CA and a `localhost`/`127.0.0.1` certificate signed by it, all PEM.
pub(super) fn self_signed_chain() -> Result<(String, String, String), SimError> {
    chain().map_err(|e| SimError::Tls {
        detail: e.to_string(),
    })
}

fn chain() -> Result<(String, String, String), rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "casewarden simulator CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
        .signed_by(&leaf_key, &ca)?;
    Ok((ca.pem(), leaf.pem(), leaf_key.serialize_pem()))
}
