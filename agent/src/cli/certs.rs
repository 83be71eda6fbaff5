//! `corral certs`: the cluster CA, the certificates it issues, and their revocation.
//!
//! Everything here runs where the CA key is and touches only files: `init` creates the CA,
//! `issue` signs and records a certificate (`issued.json` beside `ca.pem`), `revoke`
//! marks certificates revoked and writes the CRL the coordinator applies (re-read every
//! two seconds, no restart), `crl` writes that CRL again with a fresh next update, and
//! `list` shows the record. The rules (serials, atomic writes, idempotent revocation)
//! live in `corral_transport::issued`.
//!
//! Exit codes: as the rest of the CLI; revoking a name or serial that is not on record
//! exits 4, with what is on record in the message.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Result;
use clap::Subcommand;

use super::Exit;
use corral_transport::issued::{
    self, CrlOptions, CrlWritten, IssuedCert, RevokeError, RevokeTarget, DEFAULT_CRL_DAYS,
};
use corral_transport::pki::{self, Role};

#[derive(Subcommand, Debug)]
pub(super) enum CertsCmd {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "corral cluster CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by the CA in --ca (and record it there, for `revoke`).
    Issue {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses (coordinators: every address agents dial).
        #[arg(long)]
        san: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke every unexpired certificate issued for NAME, or the one with SERIAL (or the
    /// one in --cert FILE), and write the CRL the coordinator applies within seconds.
    Revoke {
        #[arg(long)]
        ca: PathBuf,
        /// A name (every unexpired certificate issued for it) or a serial as `certs list`
        /// shows it (with colons, it is only ever a serial).
        #[arg(
            value_name = "NAME|SERIAL",
            required_unless_present = "cert",
            conflicts_with = "cert"
        )]
        target: Option<String>,
        /// Revoke the certificate in this PEM file (for one issued before the CA kept a
        /// record).
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
        /// Where to write the CRL (default: crl.pem in --ca). Point it at the file the
        /// coordinator reads (`[tls] crl`, by default crl.pem beside its tls.ca).
        #[arg(long, value_name = "FILE")]
        crl_out: Option<PathBuf>,
        /// Days until the CRL's next update (informational: the coordinator keeps
        /// applying a CRL past it, and warns).
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        crl_days: u32,
    },
    /// Write the CRL again from the record, with a fresh next update (revokes nothing).
    Crl {
        #[arg(long)]
        ca: PathBuf,
        /// Where to write the CRL (default: crl.pem in --ca).
        #[arg(long, value_name = "FILE")]
        crl_out: Option<PathBuf>,
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
    /// List the certificates the CA in --ca has issued, with their serials and status.
    List {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init { out, name, days } => {
            let (cert, key) = pki::init_ca(&out, &name, days)?;
            println!("created CA certificate {}\ncreated CA key {} (keep it secret; it is needed only to issue certificates)", cert.display(), key.display());
            Ok(())
        }
        CertsCmd::Issue {
            ca,
            name,
            role,
            out,
            san,
            days,
        } => {
            let ca = pki::Ca::load(&ca)?;
            let files = ca.issue_to_dir(&name, role, &san, days, &out)?;
            let serial = pki::serial_of_file(&files.cert)?;
            println!(
                "issued {role} certificate for {name} (serial {serial})\n  cert: {}\n  key:  {}\n  ca:   {}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            );
            Ok(())
        }
        CertsCmd::Revoke {
            ca,
            target,
            cert,
            crl_out,
            crl_days,
        } => {
            let target = match (target, cert) {
                (_, Some(file)) => RevokeTarget::Certificate(file),
                (Some(t), None) => RevokeTarget::NameOrSerial(t),
                // clap requires one of them.
                (None, None) => anyhow::bail!("name a certificate: NAME, SERIAL or --cert FILE"),
            };
            let crl = CrlOptions {
                out: crl_out.unwrap_or_else(|| issued::default_crl_path(&ca)),
                days: crl_days,
            };
            let ca = pki::Ca::load(&ca)?;
            let done = match ca.revoke(&target, &crl) {
                Ok(d) => d,
                Err(e @ RevokeError::Unknown { .. }) => {
                    return Err(Exit {
                        code: 4,
                        message: e.to_string(),
                    }
                    .into())
                }
                Err(e) => return Err(e.into()),
            };
            for c in &done.revoked {
                println!("revoked {}", describe(c));
            }
            for c in &done.already {
                println!(
                    "already revoked {} (since {})",
                    describe(c),
                    c.revoked_at.map(time).unwrap_or_default()
                );
            }
            for c in &done.expired {
                println!("expired, left as it is: {}", describe(c));
            }
            print_crl(&done.crl);
            Ok(())
        }
        CertsCmd::Crl { ca, crl_out, days } => {
            let crl = CrlOptions {
                out: crl_out.unwrap_or_else(|| issued::default_crl_path(&ca)),
                days,
            };
            print_crl(&pki::Ca::load(&ca)?.write_crl(&crl)?);
            Ok(())
        }
        CertsCmd::List { ca, json } => {
            let certs = pki::Ca::load(&ca)?.issued()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&certs)?);
            } else {
                print!("{}", table(&certs, SystemTime::now()));
            }
            Ok(())
        }
    }
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn describe(c: &IssuedCert) -> String {
    format!(
        "{} certificate for {} (serial {}, valid until {})",
        c.role,
        c.name,
        c.serial,
        time(c.not_after)
    )
}

fn print_crl(crl: &CrlWritten) {
    println!(
        "wrote CRL {} (number {}, {} revoked, next update {})",
        crl.path.display(),
        crl.number,
        crl.revoked,
        time(crl.next_update)
    );
    println!("the coordinator applies it within seconds, without a restart, when this is the file it reads (`[tls] crl`, by default crl.pem beside its tls.ca); otherwise copy it there");
}

/// `corral certs list`: one line per certificate, in the order issued.
fn table(certs: &[IssuedCert], now: SystemTime) -> String {
    let mut rows = vec![[
        "SERIAL".to_string(),
        "NAME".into(),
        "ROLE".into(),
        "STATUS".into(),
        "ISSUED".into(),
        "EXPIRES".into(),
    ]];
    for c in certs {
        rows.push([
            c.serial.to_string(),
            c.name.clone(),
            c.role.to_string(),
            c.status(now).to_string(),
            time(c.issued_at),
            time(c.not_after),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if certs.is_empty() {
        out.push_str("(nothing on record yet: `corral certs issue` records what it issues)\n");
    }
    out
}
