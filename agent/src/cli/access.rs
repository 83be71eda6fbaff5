//! `corral whoami` and `corral tokens`: who the API takes you for, and the bearer tokens
//! admins hand to scripts, dashboards and users off the coordinator host.
//!
//! A token's secret is printed once, when it is made; the coordinator keeps only its
//! hash, so a lost token is revoked and replaced, never recovered.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::show::{age, listing, Column};
use super::{ApiArgs, ApiClient};
use corral_proto::api::{CreateToken, CreatedToken, Role, TokenView, Via};
use corral_proto::pool::{CreateJoinToken, CreatedJoinToken, JoinTokenView};

#[derive(Args, Debug)]
pub(super) struct WhoamiArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub(super) enum TokensCmd {
    /// Make a token (admin): prints its secret, once. With --join: a single-use
    /// bootstrap token for one new node of a pool (`corral join`).
    Create {
        /// Whom the token authenticates as (jobs submitted with it are theirs and run as
        /// them).
        #[arg(long, required_unless_present = "join", conflicts_with = "join")]
        user: Option<String>,
        /// viewer (read), user (submit and manage own jobs) or admin.
        #[arg(long, value_parser = parse_role, required_unless_present = "join", conflicts_with = "join")]
        role: Option<Role>,
        /// A join token: works once, for one node of --pool, and needs --ttl.
        #[arg(long, requires_all = ["pool", "ttl"])]
        join: bool,
        /// The pool the joining node becomes a member of.
        #[arg(long, requires = "join")]
        pool: Option<String>,
        /// The joining node's name (default: the pool's next, POOL-N).
        #[arg(long, requires = "join")]
        node: Option<String>,
        /// How long it is valid, e.g. 30d or 12h (default: until revoked; join tokens
        /// must say, at most 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every token (admin), without secrets; with --join, the join tokens.
    List {
        #[arg(long)]
        join: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token (admin); it stops working at once. Join tokens' ids start with
    /// `j`.
    Revoke {
        /// The token's id (`corral tokens list`, `corral tokens list --join`).
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const TOKEN_COLUMNS: &[Column<TokenView>] = &[
    ("ID", |t, _| t.id.clone()),
    ("USER", |t, _| t.user.clone()),
    ("ROLE", |t, _| t.role.to_string()),
    ("CREATED", |t, now| {
        format!("{} ago by {}", age(now, Some(t.created_ms)), t.created_by)
    }),
    ("STATE", |t, now| match (t.revoked_ms, t.expires_ms) {
        (Some(r), _) => format!("revoked {} ago", age(now, Some(r))),
        (None, Some(e)) if e <= now => "expired".into(),
        (None, Some(e)) => format!("expires in {}", age(e, Some(now))),
        (None, None) => "valid".into(),
    }),
];

const JOIN_COLUMNS: &[Column<JoinTokenView>] = &[
    ("ID", |t, _| t.id.clone()),
    ("POOL", |t, _| t.pool.clone()),
    ("NODE", |t, _| {
        t.node.clone().unwrap_or_else(|| "(at join)".into())
    }),
    ("CREATED", |t, now| {
        format!("{} ago by {}", age(now, Some(t.created_ms)), t.created_by)
    }),
    ("STATE", |t, now| {
        match (t.used_ms, &t.used_by, t.revoked_ms) {
            (Some(u), by, _) => format!(
                "used {} ago by {}",
                age(now, Some(u)),
                by.as_deref().unwrap_or("?")
            ),
            (None, _, Some(r)) => format!("revoked {} ago", age(now, Some(r))),
            _ if t.expires_ms <= now => "expired".into(),
            _ => format!("expires in {}", age(t.expires_ms, Some(now))),
        }
    }),
];

pub(super) async fn whoami(a: WhoamiArgs) -> Result<()> {
    let me = ApiClient::new(&a.api)?.whoami().await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&me)?);
        return Ok(());
    }
    let via = match &me.via {
        Via::Socket { uid } => format!("the coordinator's socket (local uid {uid})"),
        Via::Token { id } => format!("token {id}"),
        Via::Certificate { serial } => format!("operator certificate {serial}"),
    };
    println!("{} ({}), by {via}", me.user, me.role);
    Ok(())
}

pub(super) async fn tokens(cmd: TokensCmd) -> Result<()> {
    match cmd {
        TokensCmd::Create {
            join: true,
            pool: Some(pool),
            node,
            ttl: Some(ttl),
            json,
            api,
            ..
        } => {
            let made: CreatedJoinToken = ApiClient::new(&api)?
                .post_json(
                    "/api/v1/join-tokens",
                    Some(&CreateJoinToken {
                        pool,
                        ttl_secs: ttl.as_secs().max(1),
                        node,
                    }),
                    Duration::from_secs(10),
                    "creating a join token",
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                println!("{}", made.secret);
                eprintln!(
                    "join token {} for a node of pool {} ({}): shown once, works once, expires in {}; on the new node: `corral join --url API --token ... --ca ca.pem --dir DIR`",
                    made.token.id,
                    made.token.pool,
                    made.token.node.as_deref().unwrap_or("named at join"),
                    humantime::format_duration(ttl)
                );
            }
        }
        TokensCmd::Create { join: true, .. } => {
            anyhow::bail!("a join token needs --pool and --ttl")
        }
        TokensCmd::Create {
            user,
            role,
            ttl,
            json,
            api,
            ..
        } => {
            let (Some(user), Some(role)) = (user, role) else {
                anyhow::bail!(
                    "give --user and --role (or --join --pool POOL --ttl 1h for a join token)"
                );
            };
            let made: CreatedToken = ApiClient::new(&api)?
                .post_json(
                    "/api/v1/tokens",
                    Some(&CreateToken {
                        user,
                        role,
                        ttl_secs: ttl.map(|d| d.as_secs().max(1)),
                    }),
                    Duration::from_secs(10),
                    "creating a token",
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                println!("{}", made.secret);
                eprintln!(
                    "token {} for {} ({}): shown once; clients send it as `Authorization: Bearer ...` (CLI: CORRAL_TOKEN or --token-file)",
                    made.token.id, made.token.user, made.token.role
                );
            }
        }
        TokensCmd::List {
            join: true,
            json,
            api,
        } => {
            let all: Vec<JoinTokenView> = ApiClient::new(&api)?
                .get_json("/api/v1/join-tokens", "listing join tokens")
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", listing(JOIN_COLUMNS, &all, unix_ms()));
            }
        }
        TokensCmd::List { json, api, .. } => {
            let all: Vec<TokenView> = ApiClient::new(&api)?
                .get_json("/api/v1/tokens", "listing tokens")
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", listing(TOKEN_COLUMNS, &all, unix_ms()));
            }
        }
        TokensCmd::Revoke { id, json, api } if id.starts_with('j') => {
            let t: JoinTokenView = ApiClient::new(&api)?
                .post_json::<(), _>(
                    &format!(
                        "/api/v1/join-tokens/{}/revoke",
                        super::client::query_value(&id)
                    ),
                    None,
                    Duration::from_secs(10),
                    &format!("revoking join token {id}"),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("join token {} for pool {} is revoked", t.id, t.pool);
            }
        }
        TokensCmd::Revoke { id, json, api } => {
            let t: TokenView = ApiClient::new(&api)?
                .post_json::<(), _>(
                    &format!("/api/v1/tokens/{}/revoke", super::client::query_value(&id)),
                    None,
                    Duration::from_secs(10),
                    &format!("revoking token {id}"),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("token {} of {} is revoked", t.id, t.user);
            }
        }
    }
    Ok(())
}
