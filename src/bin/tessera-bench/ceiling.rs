//! The ceiling: what the crypto of one exchange costs per core, with keys parsed once (as the service
//! holds them): verify an Ed25519 assertion, sign an Ed25519 token — aws-lc-rs, the service's own library.
//! Run single-threaded, so the numbers are per core; the service's throughput is then compared with this
//! times the cores it had.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, ParsedPublicKey};

#[derive(clap::Args)]
pub(crate) struct CeilingArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
}

pub(crate) fn run(args: &CeilingArgs) -> Result<bool, String> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
    let upstream = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
    let broker = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let public = ParsedPublicKey::new(&ED25519, upstream.public_key().as_ref()).map_err(|e| e.to_string())?;
    // Signing inputs the size of a dev assertion (~330 bytes) and of an issued token (~700 bytes).
    let assertion = vec![b'a'; 330];
    let token = vec![b't'; 700];
    let signature = upstream.sign(&assertion);
    let duration = Duration::from_secs_f64(args.duration.max(0.2));
    let verify = per_second(duration, || public.verify_sig(&assertion, signature.as_ref()).is_ok());
    let sign = per_second(duration, || !broker.sign(&token).as_ref().is_empty());
    let exchange = per_second(duration, || {
        public.verify_sig(&assertion, signature.as_ref()).is_ok() && !broker.sign(&token).as_ref().is_empty()
    });
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("| Ed25519 verify (pre-parsed key) | {verify:.0} |");
    println!("| Ed25519 sign (pre-parsed key) | {sign:.0} |");
    println!("| one exchange's crypto (verify + sign) | {exchange:.0} |");
    println!("| introspection's crypto (verify) | {verify:.0} |");
    eprintln!(
        "{}",
        serde_json::json!({ "verify_per_core": verify.round(), "sign_per_core": sign.round(),
            "exchange_per_core": exchange.round(), "cores": cores })
    );
    Ok(true)
}

/// Calls per second of `f` on this thread, over `duration`.
fn per_second(duration: Duration, mut f: impl FnMut() -> bool) -> f64 {
    for _ in 0..200 {
        std::hint::black_box(f());
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            std::hint::black_box(f());
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}
