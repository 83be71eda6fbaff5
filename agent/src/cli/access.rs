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

#[derive(Args, Debug)]
pub(super) struct WhoamiArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub(super) enum TokensCmd {
    /// Make a token (admin): prints its secret, once.
    Create {
        /// Whom the token authenticates as (jobs submitted with it are theirs and run as
        /// them).
        #[arg(long)]
        user: String,
        /// viewer (read), user (submit and manage own jobs) or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How long it is valid, e.g. 30d or 12h (default: until revoked).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Every token (admin), without secrets.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token (admin); it stops working at once.
    Revoke {
        /// The token's id (`corral tokens list`).
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
            user,
            role,
            ttl,
            json,
            api,
        } => {
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
        TokensCmd::List { json, api } => {
            let all: Vec<TokenView> = ApiClient::new(&api)?
                .get_json("/api/v1/tokens", "listing tokens")
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", listing(TOKEN_COLUMNS, &all, unix_ms()));
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
