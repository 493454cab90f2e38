//! `rewind scratch list [RUN]`, `rewind scratch drop RUN`: the scratch database instances `pitr`
//! steps brought up (`rewind-pitr`'s registry: `REWIND_SCRATCH_REGISTRY`, else
//! `$XDG_STATE_HOME/rewind/scratch`, else `~/.local/state/rewind/scratch`).

use std::path::PathBuf;

use anyhow::Result;
use rewind_pitr::Registry;
use rewind_pitr::scratch::Listed;

use crate::exit::{Exit, refused};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The scratch instances (of RUN, or all): engine, port, state, size, data directory.
    List {
        /// Only this run's.
        run_id: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Stops RUN's scratch instances and removes their directories (only directories that hold
    /// rewind's marker for them). A run with none: nothing to do, exit 0.
    Drop {
        /// The run.
        run_id: String,
        #[command(flatten)]
        registry: RegistryArg,
    },
}

#[derive(Debug, clap::Args)]
struct RegistryArg {
    /// The scratch registry (default: REWIND_SCRATCH_REGISTRY, else $XDG_STATE_HOME/rewind/scratch,
    /// else ~/.local/state/rewind/scratch).
    #[arg(long, value_name = "DIR")]
    registry: Option<PathBuf>,
}

impl RegistryArg {
    fn open(&self) -> Result<Registry> {
        match &self.registry {
            Some(d) => Ok(Registry::at(d)),
            None => Registry::default_location().map_err(|e| refused(format!("rewind: {e}"))),
        }
    }
}

pub fn run(args: &Args) -> Result<Exit> {
    match &args.command {
        Command::List { run_id, json, registry } => {
            let run = run_id.as_deref().map(store::run_id).transpose()?.map(|r| r.to_string());
            let listed = registry
                .open()?
                .list(run.as_deref())
                .map_err(|e| anyhow::anyhow!("rewind: {e}"))?;
            if *json {
                for l in &listed {
                    println!("{}", serde_json::to_string(&json_row(l))?);
                }
            } else if listed.is_empty() {
                println!(
                    "no scratch instances{}",
                    run.map(|r| format!(" of run {r}")).unwrap_or_default()
                );
            } else {
                print_table(&listed);
            }
            Ok(Exit::Ok)
        }
        Command::Drop { run_id, registry } => {
            let run = store::run_id(run_id)?.to_string();
            let reg = registry.open()?;
            let dropped = store::runtime()?
                .block_on(reg.drop_run(&run))
                .map_err(|e| anyhow::anyhow!("rewind: {e}"))?;
            if dropped.is_empty() {
                println!("no scratch instances of run {run}");
            }
            for e in &dropped {
                println!(
                    "dropped {} ({} on port {}, {})",
                    e.owner.instance,
                    e.engine.as_str(),
                    e.port,
                    e.into.display()
                );
            }
            Ok(Exit::Ok)
        }
    }
}

fn server(l: &Listed) -> String {
    match (l.missing, l.pid) {
        (true, _) => "directory gone".into(),
        (false, Some(pid)) => format!("running (pid {pid})"),
        (false, None) => "stopped".into(),
    }
}

fn json_row(l: &Listed) -> serde_json::Value {
    let e = &l.entry;
    serde_json::json!({
        "run_id": e.owner.run,
        "instance": e.owner.instance,
        "engine": e.engine.as_str(),
        "method": e.source.method(),
        "port": e.port,
        "state": e.state.as_str(),
        "server": server(l),
        "pid": l.pid,
        "size_bytes": l.size_bytes,
        "into": e.into,
        "data_dir": e.data_dir(),
        "user": e.user,
        "restore_point": e.target,
        "recovered_to": e.recovered.as_ref().map(|r| rewind_pitr::time::rfc3339(r.recovered_to)),
        "error": e.error,
        "updated": e.updated,
    })
}

fn print_table(listed: &[Listed]) {
    let rows: Vec<[String; 8]> = listed
        .iter()
        .map(|l| {
            let e = &l.entry;
            [
                e.owner.run.clone(),
                e.owner.instance.clone(),
                e.engine.as_str().to_string(),
                e.port.to_string(),
                e.state.as_str().to_string(),
                server(l),
                size(l.size_bytes),
                e.data_dir().display().to_string(),
            ]
        })
        .collect();
    let head = ["RUN", "INSTANCE", "ENGINE", "PORT", "STATE", "SERVER", "SIZE", "DATA DIR"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(&head.map(String::from));
    for r in &rows {
        line(r);
    }
}

fn size(b: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if b as f64 >= 1024.0 * MB {
        format!("{:.1} GiB", b as f64 / (1024.0 * MB))
    } else {
        format!("{:.1} MiB", b as f64 / MB)
    }
}
