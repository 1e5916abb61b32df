//! The requests of a run, prepared before it starts so the run measures the server and not the client:
//! distinct assertions (one subject each), a mix of delegation depths and of granted and refused
//! requests — or, for a peer, subject tokens read from a file.

use std::path::Path;

use tessera::exchange::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT};
use tessera::grpc::pb;

use crate::driver::{Answer, Driver, Grpc, Wire, encode};

/// RFC 8693 §3: a tessera token presented as the subject of a further exchange.
const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// What a request should get: anything else is an error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Expect {
    /// Exchange granted / introspection active.
    Granted,
    /// Exchange refused by policy or scope / introspection inactive.
    Refused,
}

pub(crate) struct Request {
    pub(crate) expect: Expect,
    /// 1: from an upstream assertion; 2: a tessera token re-exchanged with an actor token.
    pub(crate) depth: u8,
    pub(crate) wire: Wire,
}

/// One token exchange, as a client would send it.
#[derive(Clone, Default)]
pub(crate) struct Exchange {
    pub(crate) subject: String,
    pub(crate) subject_type: &'static str,
    pub(crate) actor: Option<String>,
    pub(crate) audience: String,
    pub(crate) scope: String,
    pub(crate) task_id: String,
}

impl Exchange {
    pub(crate) fn wire(&self) -> Wire {
        let mut form = format!(
            "grant_type={}&subject_token={}&subject_token_type={}&audience={}&scope={}",
            encode(GRANT_TYPE_TOKEN_EXCHANGE),
            encode(&self.subject),
            encode(self.subject_type),
            encode(&self.audience),
            encode(&self.scope)
        );
        if let Some(actor) = &self.actor {
            form.push_str(&format!("&actor_token={}&actor_token_type={}", encode(actor), encode(TOKEN_TYPE_JWT)));
        }
        if !self.task_id.is_empty() {
            form.push_str(&format!("&task_id={}", encode(&self.task_id)));
        }
        let grpc = Grpc::Exchange(Box::new(pb::ExchangeTokenRequest {
            grant_type: GRANT_TYPE_TOKEN_EXCHANGE.into(),
            audience: vec![self.audience.clone()],
            scope: self.scope.clone(),
            subject_token: self.subject.clone(),
            subject_token_type: self.subject_type.into(),
            actor_token: self.actor.clone().unwrap_or_default(),
            actor_token_type: if self.actor.is_some() { TOKEN_TYPE_JWT.into() } else { String::new() },
            task_id: self.task_id.clone(),
            ..pb::ExchangeTokenRequest::default()
        }));
        Wire { grpc, form }
    }
}

pub(crate) fn introspection(token: &str) -> Wire {
    Wire {
        grpc: Grpc::Introspect(pb::IntrospectRequest { token: token.into(), token_type_hint: String::new() }),
        form: format!("token={}", encode(token)),
    }
}

/// Which requests a run sends.
#[derive(Clone)]
pub(crate) struct Mix {
    /// How many distinct requests (and subjects).
    pub(crate) distinct: usize,
    /// Percent refused: exchanges asking for a scope the policy refuses; introspections of revoked tokens.
    pub(crate) refused_percent: usize,
    /// Percent of exchanges (and introspected tokens) of depth 2: a tessera task token re-exchanged with an
    /// actor token.
    pub(crate) delegated_percent: usize,
    pub(crate) audience: String,
    pub(crate) scope: String,
    pub(crate) refused_scope: String,
}

/// Source of subject tokens: minted from the dev issuer's key, or read from a file (a peer's).
pub(crate) enum Subjects<'a> {
    Dev(&'a Path),
    File(Vec<String>),
}

impl Subjects<'_> {
    fn get(&self, i: usize) -> Result<String, String> {
        match self {
            Subjects::Dev(dir) => {
                let now = tessera::clock::now();
                tessera::dev::assertion(dir, &format!("bench-agent-{i}"), None, 1800, now)
            }
            Subjects::File(tokens) => {
                if tokens.is_empty() {
                    return Err("the subject token file is empty".into());
                }
                Ok(tokens[i % tokens.len()].clone())
            }
        }
    }

    fn can_delegate(&self) -> bool {
        matches!(self, Subjects::Dev(_))
    }
}

/// Mints the tokens the requests need (task tokens for depth 2, the tokens to introspect) through `driver`,
/// `parallel` at a time.
async fn issue_all(driver: &Driver, exchanges: &[Exchange], parallel: usize) -> Result<Vec<String>, String> {
    use futures_util::StreamExt as _;
    let results: Vec<Result<String, String>> = futures_util::stream::iter(exchanges.iter().enumerate())
        .map(|(i, e)| async move {
            match driver.send(i, &e.wire()).await? {
                Answer::Granted(t) => Ok(t),
                Answer::Refused => Err("a set-up exchange was refused".to_string()),
            }
        })
        .buffered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The exchanges of a run, granted and refused, of depth 1 and 2.
pub(crate) async fn exchanges(driver: &Driver, subjects: &Subjects<'_>, mix: &Mix) -> Result<Vec<Request>, String> {
    let mut plan = Vec::with_capacity(mix.distinct);
    let mut tasks = Vec::new();
    for i in 0..mix.distinct {
        // Spread over the 100 slots (37 is prime to 100), so even a small mix has every kind.
        let slot = (i * 37) % 100;
        let subject = subjects.get(i)?;
        let refused = slot < mix.refused_percent;
        let delegated = !refused && subjects.can_delegate() && slot >= 100 - mix.delegated_percent;
        let scope = if refused { &mix.refused_scope } else { &mix.scope };
        let expect = if refused { Expect::Refused } else { Expect::Granted };
        let exchange = Exchange {
            subject,
            subject_type: TOKEN_TYPE_JWT,
            audience: mix.audience.clone(),
            scope: scope.clone(),
            task_id: if subjects.can_delegate() { format!("bench-task-{i}") } else { String::new() },
            ..Exchange::default()
        };
        if delegated {
            // First a task token for the subject; the request re-exchanges it (it keeps its task) with another
            // agent as the actor.
            tasks.push((plan.len(), Exchange { audience: tessera::dev::BROKER_ISSUER.into(), ..exchange.clone() }));
        }
        plan.push((expect, if delegated { 2 } else { 1 }, exchange));
    }
    let issued = issue_all(driver, &tasks.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), 32).await?;
    for ((at, _), task_token) in tasks.iter().zip(issued) {
        let actor = subjects.get(at + mix.distinct)?;
        let e = &mut plan[*at].2;
        e.subject = task_token;
        e.subject_type = TOKEN_TYPE_ACCESS_TOKEN;
        e.actor = Some(actor);
        e.task_id.clear();
    }
    Ok(plan.into_iter().map(|(expect, depth, e)| Request { expect, depth, wire: e.wire() }).collect())
}

/// The introspections of a run: tokens issued by the exchanges above (both depths), `refused_percent` of them
/// revoked first; or, with `tokens`, those (all expected active).
pub(crate) async fn introspections(
    driver: &Driver,
    subjects: &Subjects<'_>,
    mix: &Mix,
    tokens: Option<Vec<String>>,
) -> Result<Vec<Request>, String> {
    if let Some(tokens) = tokens {
        return Ok(tokens
            .iter()
            .map(|t| Request { expect: Expect::Granted, depth: 1, wire: introspection(t) })
            .collect());
    }
    let all_granted = Mix { refused_percent: 0, ..mix.clone() };
    let plan = exchanges(driver, subjects, &all_granted).await?;
    let depths: Vec<u8> = plan.iter().map(|r| r.depth).collect();
    let mut tokens = Vec::with_capacity(plan.len());
    {
        use futures_util::StreamExt as _;
        let results: Vec<Result<String, String>> = futures_util::stream::iter(plan.iter().enumerate())
            .map(|(i, r)| async move {
                match driver.send(i, &r.wire).await? {
                    Answer::Granted(t) => Ok(t),
                    Answer::Refused => Err("a set-up exchange was refused".to_string()),
                }
            })
            .buffered(32)
            .collect()
            .await;
        for r in results {
            tokens.push(r?);
        }
    }
    let mut out = Vec::with_capacity(tokens.len());
    for (i, (token, depth)) in tokens.iter().zip(depths).enumerate() {
        let revoked = (i * 37) % 100 < mix.refused_percent;
        if revoked {
            driver.revoke(i, token).await?;
        }
        let expect = if revoked { Expect::Refused } else { Expect::Granted };
        out.push(Request { expect, depth, wire: introspection(token) });
    }
    Ok(out)
}

/// A tiny deterministic shuffle (xorshift), so every run sends the requests in the same mixed order.
pub(crate) fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
