//! `herald-load all`: every scenario, `--runs` runs each (3 by default), results as JSON under
//! `bench/results/latest/`, and the generated tables of `docs/benchmarks.md` rewritten between their markers
//! (`<!-- bench:<section>:start -->` … `<!-- bench:<section>:end -->`). Peers that cannot be measured (Mosquitto
//! not running, npm unavailable) are reported as such; the Herald scenarios still run.

use std::path::PathBuf;

use clap::Parser;
use herald_bench::net::Error;
use herald_bench::report::{self, Check, Machine, table};
use serde_json::json;

use crate::phases::{self, Phase};
use crate::{Outcome, broadcast, dm, fanout, idle, store, transports};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Runs per scenario.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/latest"))]
    out: PathBuf,
    /// The page whose generated sections are rewritten.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.md"))]
    docs: PathBuf,
    /// Do not rewrite the docs page.
    #[arg(long)]
    no_docs: bool,
    /// Skip the peers (Mosquitto, Socket.IO).
    #[arg(long)]
    no_peers: bool,
    /// Scenarios to skip (A, B, C, D, E, peers: C-mosquitto, C-socketio, B-socketio), comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Also measure the per-transport table (T, `herald-load transports`): about 10 more minutes with 3 runs,
    /// so it is only run when asked for.
    #[arg(long)]
    transports: bool,
}

/// Parses a scenario's command line (the same text the docs show) into its arguments.
pub(crate) fn parse<T: clap::Args>(cmd: &str) -> Result<T, Error> {
    #[derive(Parser)]
    struct Wrap<A: clap::Args> {
        #[command(flatten)]
        a: A,
    }
    let words = std::iter::once("herald-load").chain(cmd.split_whitespace().skip(1));
    Ok(Wrap::<T>::try_parse_from(words)?.a)
}

/// One scenario of the suite: its docs section, its command, and how to run it.
struct Item {
    key: &'static str,
    command: String,
    result: Result<Outcome, String>,
    secs: f64,
    /// Where its time went.
    phases: Vec<Phase>,
}

pub(crate) async fn run(args: Args) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let machine = Machine::detect();
    let r = args.runs;
    let plan: Vec<(&str, String)> = vec![
        ("A", format!("idle --connections 10000 --runs {r}")),
        ("B", format!("dm --pairs 1000 --rate 50000 --runs {r}")),
        ("C", format!("fanout --members 10000 --rates 50,100,200 --runs {r} --server-arg=--write-coalescing-ms=20")),
        ("D", format!("broadcast --connections 19000 --messages 20 --runs {r}")),
        (
            "E",
            format!(
                "store --store sqlite,postgres --postgres-url postgres://postgres@127.0.0.1:5432/test \
                 --channels 1,1000 --rate 20000 --runs {r}"
            ),
        ),
        ("C-mosquitto", format!("fanout --target mosquitto --members 10000 --rates 50,100,200 --runs {r}")),
        ("C-socketio", format!("fanout --target socketio --members 10000 --rates 50,100,200 --runs {r}")),
        ("B-socketio", format!("dm --target socketio --pairs 1000 --rate 50000 --search-steps 3 --runs {r}")),
    ];
    let mut items = Vec::new();
    let _ = phases::take();
    for (key, cmd) in plan {
        let peer = key.contains('-');
        if args.skip.iter().any(|s| s.eq_ignore_ascii_case(key)) || (peer && args.no_peers) {
            continue;
        }
        println!("\n=== {key}: herald-load {cmd}");
        let t = std::time::Instant::now();
        let result = match key {
            "A" => idle::run(&parse::<idle::Args>(&cmd)?).await,
            "B" | "B-socketio" => dm::run(&parse::<dm::Args>(&cmd)?).await,
            "C" | "C-mosquitto" | "C-socketio" => fanout::run(&parse::<fanout::Args>(&cmd)?).await,
            "D" => broadcast::run(&parse::<broadcast::Args>(&cmd)?).await,
            _ => store::run(&parse::<store::Args>(&cmd)?).await,
        };
        let result = result.map_err(|e| e.to_string());
        if let Err(e) = &result {
            println!("{key} FAILED: {e}");
        }
        let (secs, phases) = (t.elapsed().as_secs_f64(), phases::take());
        println!("{key}: {secs:.0} s: {}", phases::line(&phases, secs));
        items.push(Item { key, command: format!("herald-load {cmd}"), result, secs, phases });
    }

    let transport_rows = if !args.transports || args.skip.iter().any(|s| s.eq_ignore_ascii_case("T")) {
        None
    } else {
        let t: transports::Args = parse(&format!("transports --runs {r} --no-docs"))?;
        println!("\n=== T: herald-load transports --runs {r}");
        Some((transports::measure(&t).await?, t))
    };

    std::fs::create_dir_all(&args.out)?;
    let mut checks: Vec<Check> = Vec::new();
    for it in &items {
        let json = match &it.result {
            Ok(o) => {
                checks.extend(o.checks.iter().cloned());
                o.json.clone()
            }
            Err(e) => json!({"error": e}),
        };
        let doc =
            json!({"command": it.command, "seconds": it.secs, "phases": it.phases, "machine": machine, "result": json});
        std::fs::write(args.out.join(format!("{}.json", it.key)), serde_json::to_string_pretty(&doc)?)?;
    }
    if let Some((rows, _)) = &transport_rows {
        let doc = json!({"machine": machine, "rows": transports::to_json(rows)});
        std::fs::write(args.out.join("T.json"), serde_json::to_string_pretty(&doc)?)?;
    }
    checks.push(Check {
        name: "F: push dispatch".into(),
        target: "—".into(),
        measured: "not measured: filled when push providers exist".into(),
        pass: None,
    });
    let times: Vec<serde_json::Value> =
        items.iter().map(|it| json!({"scenario": it.key, "seconds": it.secs, "phases": it.phases})).collect();
    let summary = json!({
        "machine": machine, "runs": args.runs, "total_seconds": started.elapsed().as_secs_f64(),
        "scenarios": times, "checks": checks,
    });
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;

    println!("\n=== targets ({} runs each, medians)", args.runs);
    for c in &checks {
        println!("{:4}  {} — target {}, measured {}", c.verdict(), c.name, c.target, c.measured);
    }
    println!("\n=== time per scenario");
    for it in &items {
        println!("{:12} {:5.0} s: {}", it.key, it.secs, phases::line(&it.phases, it.secs));
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());

    if !args.no_docs {
        let mut doc = std::fs::read_to_string(&args.docs)?;
        let mut generated = sections(&items, &checks, &machine, args.runs, started.elapsed().as_secs_f64());
        if let Some((rows, t)) = &transport_rows {
            generated.push(("transports".to_owned(), transports::section(rows, t.rate, t.pairs)));
        }
        for (section, text) in generated {
            doc =
                report::replace_section(&doc, &section, &text).map_err(|e| format!("{}: {e}", args.docs.display()))?;
        }
        std::fs::write(&args.docs, doc)?;
        println!("rewrote the generated sections of {}", args.docs.display());
    }
    Ok(())
}

fn item<'a>(items: &'a [Item], key: &str) -> Option<&'a Item> {
    items.iter().find(|i| i.key == key)
}

/// The text of a scenario's section: command, table (or the failure).
fn block(items: &[Item], keys: &[&str]) -> String {
    let mut s = String::new();
    for key in keys {
        let Some(it) = item(items, key) else {
            s.push_str(&format!("`{key}`: not run (skipped).\n\n"));
            continue;
        };
        s.push_str(&format!("`target/release/{}` ({:.0} s)\n\n", it.command, it.secs));
        match &it.result {
            Ok(o) => s.push_str(&o.table),
            Err(e) => s.push_str(&format!("**Not measured:** {e}\n")),
        }
        s.push('\n');
    }
    s
}

fn ratio(herald: Option<f64>, peer: Option<f64>) -> String {
    match (herald, peer) {
        (Some(h), Some(p)) if p > 0.0 => format!("{:.2}×", h / p),
        _ => "—".into(),
    }
}

fn sections(items: &[Item], checks: &[Check], machine: &Machine, runs: usize, secs: f64) -> Vec<(String, String)> {
    let mut out = Vec::new();
    out.push((
        "machine".to_owned(),
        format!(
            "**Machine:** {}. Server and load generator share it. {runs} runs per figure: median (min–max). \
             Whole suite: {secs:.0} s. Command: `ulimit -n 20000 && cargo build --release -p herald-bench && \
             target/release/herald-load all`.",
            machine.line()
        ),
    ));
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| vec![c.name.clone(), c.target.clone(), c.measured.clone(), format!("**{}**", c.verdict())])
        .collect();
    out.push(("targets".to_owned(), table(&["figure", "target", "measured (median)", "verdict"], &rows)));
    out.push(("A".to_owned(), block(items, &["A"])));
    out.push(("B".to_owned(), block(items, &["B", "B-socketio"])));
    out.push(("C".to_owned(), block(items, &["C", "C-mosquitto", "C-socketio"])));
    out.push(("D".to_owned(), block(items, &["D"])));
    out.push(("E".to_owned(), block(items, &["E"])));
    out.push((
        "F".to_owned(),
        "Not measured: `herald-load push` is reserved for push dispatch and is filled when push providers \
         exist. It prints that and exits with status 2; no figures are produced."
            .to_owned(),
    ));
    let fig =
        |key: &str, name: &str| item(items, key).and_then(|i| i.result.as_ref().ok()).and_then(|o| o.figure(name));
    let rows = vec![
        vec![
            "C: best deliveries/s to 10,000 members (higher is better)".to_owned(),
            ratio(fig("C", "deliveries_per_sec"), fig("C-mosquitto", "deliveries_per_sec")),
            ratio(fig("C", "deliveries_per_sec"), fig("C-socketio", "deliveries_per_sec")),
        ],
        vec![
            "C: publish-to-last-delivery p99 (lower is better)".to_owned(),
            ratio(fig("C", "last_p99_ms"), fig("C-mosquitto", "last_p99_ms")),
            ratio(fig("C", "last_p99_ms"), fig("C-socketio", "last_p99_ms")),
        ],
        vec![
            "B: p99 at 50,000 msg/s (lower is better)".to_owned(),
            "—".into(),
            ratio(fig("B", "p99_ms"), fig("B-socketio", "p99_ms")),
        ],
        vec![
            "B: highest rate with p99 ≤ 5 ms (higher is better)".to_owned(),
            "—".into(),
            ratio(fig("B", "saturation_rate"), fig("B-socketio", "saturation_rate")),
        ],
    ];
    out.push(("ratios".to_owned(), table(&["figure", "Herald / Mosquitto", "Herald / Socket.IO"], &rows)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../../../docs/benchmarks.md");

    fn machine() -> Machine {
        Machine {
            cpu: "test cpu".into(),
            cores: 2,
            kernel: "6.0".into(),
            memory_gib: 24.0,
            rustc: "rustc 1.95".into(),
            date: "2026-11-30".into(),
            commit: "abc1234".into(),
        }
    }

    #[test]
    fn every_generated_section_has_its_markers_in_the_docs_page() {
        let failed = Item {
            key: "B",
            command: "herald-load dm".into(),
            result: Err("boom".into()),
            secs: 1.0,
            phases: Vec::new(),
        };
        let checks = vec![Check::at_most("A: x", Some(1.0), 2.0, "B", 0)];
        let mut doc = DOC.to_owned();
        for (section, text) in sections(&[failed], &checks, &machine(), 3, 10.0) {
            doc = report::replace_section(&doc, &section, &text).unwrap_or_else(|e| panic!("section {section}: {e}"));
        }
        assert!(doc.contains("**Not measured:** boom"), "a failed scenario is reported as such");
        assert!(doc.contains("| A: x | ≤ 2 B | 1 B | **PASS** |"));
        assert!(
            doc.contains(
                "2 cores (test cpu), 24 GiB RAM, Linux 6.0, rustc 1.95, run on 2026-11-30 at commit `abc1234`"
            )
        );
        assert!(doc.contains("`A`: not run (skipped)."));
        // The hand-written parts survive.
        assert!(doc.contains("### How the load is generated"));
        assert!(doc.contains("## Criterion: codec"));
        let doc = report::replace_section(&doc, "transports", "per transport").expect("transports markers");
        assert!(doc.contains("per transport"));
    }

    #[test]
    fn scenario_commands_parse() {
        let a: idle::Args = parse("idle --connections 19000 --runs 2 --server-arg=--read-buffer=256").expect("A");
        assert_eq!((a.connections, a.runs), (19_000, 2));
        assert_eq!(a.server.server_arg, vec!["--read-buffer=256".to_owned()]);
        let c: fanout::Args = parse("fanout --target mosquitto --rates 50,100 --runs 1").expect("C");
        assert_eq!(c.rates, vec![50.0, 100.0]);
        assert!(!c.shared_setup, "a fresh server per run unless asked");
        let d: broadcast::Args = parse("broadcast --runs 3 --shared-setup").expect("D");
        assert!(d.shared_setup);
        assert!(parse::<dm::Args>("dm --no-such-flag").is_err());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(Some(3.0), None), "—");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "—");
    }
}
