//! Hostile and broken configuration files (issue 16): each is rejected with an error
//! naming the file, or applied, within bounded time and memory — while a client keeps
//! making requests through the proxy at its normal latency, every one on its rule.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Env, status_kib};
use crate::proxy::{env_with, seed};

/// What a case puts in the configuration folder.
enum Put {
    Text(String),
    Bytes(Vec<u8>),
    Fifo,
    Symlink(&'static str),
    /// Written and removed ten times in a row (a file gone as it is read).
    Flicker(String),
}

/// What lb must do with it: apply it, or reject it with a message containing this.
enum Want {
    Applied,
    Rejected(&'static str),
}

/// A valid ServiceEntry of its own (address 127.10.26.x): `extra` is added to its
/// metadata, `routes` http routes to its VirtualService.
fn extra_service(annotation: &str, routes: usize) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: extra\n  \
         annotations: {{note: \"{annotation}\"}}\nspec:\n  hosts: [extra]\n  addresses: [127.10.26.1]\n  \
         ports: [{{number: 26000, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  \
         endpoints: [{{address: 127.0.0.2, labels: {{version: v0}}}}]\n"
    );
    if routes > 0 {
        s.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: extra}\nspec:\n  hosts: [extra]\n  http:\n");
        for i in 0..routes {
            s.push_str(&format!(
                "  - match: [{{uri: {{prefix: /r{i}}}}}]\n    route: [{{destination: {{host: extra}}}}]\n"
            ));
        }
    }
    s
}

/// A VirtualService with `body` as its spec's http routes, for backend-service.
fn routes(body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: hostile}}\n\
         spec:\n  hosts: [extra]\n  http:\n{body}"
    )
}

fn cases() -> Vec<(&'static str, Put, Want)> {
    use Put::*;
    use Want::*;
    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (i, prev) in ('b'..='i').zip('a'..) {
        laughs.push_str(&format!(
            "{i}: &{i} [{}]\n",
            vec![format!("*{prev}"); 9].join(", ")
        ));
    }
    let mut string_aliases = format!("s: &s \"{}\"\nl:\n", "x".repeat(1024));
    string_aliases.push_str(&"- *s\n".repeat(2_000));
    let block_nesting: String = (0..1_000)
        .map(|i| format!("{}a:\n", "  ".repeat(i)))
        .collect();
    // As the control-plane benchmark's: 10 endpoints each (65 MB).
    let hundred_k_services: String = (0..100_000)
        .map(|i| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}}}\n\
                 spec:\n  hosts: [s{i}]\n  addresses: [10.{}.{}.{}]\n  ports: [{{number: 80, name: http}}]\n  \
                 resolution: STATIC\n  endpoints:\n{}",
                100 + i / 65_536,
                (i / 256) % 256,
                i % 256,
                (0..10)
                    .map(|e| format!("  - {{address: 127.0.1.{e}, labels: {{version: v{}}}}}\n", e % 2))
                    .collect::<String>()
            )
        })
        .collect();
    let mut noise = Vec::with_capacity(1 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..(1 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    let crlf = extra_service("crlf", 1).replace('\n', "\r\n");
    vec![
        ("a billion laughs", Text(laughs), Rejected("aliases expand the document")),
        ("2,000 aliases of a 1 KiB string", Text(string_aliases), Rejected("aliases expand the document")),
        ("100,000 nested [", Text(format!("a: {}", "[".repeat(100_000))), Rejected("recursion limit exceeded")),
        ("1,000 nested mappings", Text(block_nesting), Rejected("nested deeper than 64")),
        ("100,001 documents", Text("---\na: 1\n".repeat(100_001)), Rejected("more than 100000 documents")),
        ("a 33 MiB file", Bytes(vec![b'#'; 33 << 20]), Rejected("larger than 32 MiB")),
        ("100,000 services in one file", Text(hundred_k_services), Rejected("larger than 32 MiB")),
        ("Latin-1 text", Bytes(b"a: 1\nb: caf\xe9\n".to_vec()), Rejected("hostile.yaml:2: not UTF-8")),
        ("1 MiB of random bytes", Bytes(noise), Rejected("not UTF-8")),
        ("a FIFO", Fifo, Rejected("hostile.yaml: not a regular file")),
        ("a symlink loop", Symlink("hostile.yaml"), Rejected("symbolic links")),
        ("a symlink to nothing", Symlink("nowhere.yaml"), Applied),
        ("an empty file", Text(String::new()), Applied),
        ("only document markers", Text("---\n---\n...\n---\n".into()), Applied),
        ("an unclosed quote", Text("kind: \"VirtualService\napiVersion: x\n".into()), Rejected("YAML syntax error")),
        ("tabs for indentation", Text("kind: ServiceEntry\nspec:\n\thosts: [a]\n".into()), Rejected("hostile.yaml")),
        ("a scalar document", Text("just words\n".into()), Rejected("must be a mapping")),
        ("a list document", Text("- a\n- b\n".into()), Rejected("must be a mapping")),
        ("an unknown kind", Text("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n".into()), Rejected("unknown kind")),
        ("an unknown apiVersion", Text("apiVersion: networking.istio.io/v9\nkind: VirtualService\nmetadata: {name: g}\nspec: {}\n".into()), Rejected("unknown apiVersion")),
        ("a NUL byte", Text("kind: Virtual\0Service\n".into()), Rejected("hostile.yaml")),
        ("a weight in words", Text(routes("  - route: [{destination: {host: extra}, weight: ninety}]\n")), Rejected("weight")),
        ("a weight of 1e30", Text(routes("  - route: [{destination: {host: extra}, weight: 1000000000000000000000000000000}]\n")), Rejected("weight")),
        ("a negative weight", Text(routes("  - route: [{destination: {host: extra}, weight: -5}]\n")), Rejected("weight")),
        ("a regex of a million repetitions", Text(routes("  - match: [{uri: {regex: \"(a{1000}){1000}\"}}]\n    route: [{destination: {host: extra}}]\n")), Rejected("regex")),
        ("a duplicated key", Text("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nkind: ServiceEntry\nmetadata: {name: d}\nspec: {hosts: [d]}\n".into()), Rejected("duplicate")),
        ("a second VirtualService for a host", Text(seed("c-header", "127.10.25.1", 25000).split("---").last().expect("the VirtualService").replace("backend-vs", "second-vs")), Rejected("backend-vs")),
        ("a host of 10,000 characters", Text(routes("").replace("hosts: [extra]", &format!("hosts: [{}]", "h".repeat(10_000)))), Rejected("longer than 253 characters")),
        ("a byte-order mark", Text(format!("\u{feff}{}", extra_service("bom", 0))), Applied),
        ("CRLF line endings", Text(crlf), Applied),
        ("a 20 MB annotation", Text(extra_service(&"n".repeat(20 << 20), 0)), Applied),
        ("10,000 routes in one VirtualService", Text(extra_service("many", 10_000)), Applied),
        ("a file removed as it is read", Flicker(extra_service(&"f".repeat(8 << 20), 0)), Applied),
    ]
}

/// Puts `what` at `dir/hostile.yaml` (text by write and rename, as a tool would).
fn put(env: &Env, what: &Put) {
    let at = env.config.join("hostile.yaml");
    let tmp = env.work.join("hostile.tmp");
    let write = |bytes: &[u8]| {
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, &at).expect("rename");
    };
    match what {
        Put::Text(t) => write(t.as_bytes()),
        Put::Bytes(b) => write(b),
        Put::Fifo => {
            let c = std::ffi::CString::new(at.to_str().expect("utf-8")).expect("path");
            // SAFETY: mkfifo reads the path passed.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        }
        Put::Symlink(to) => std::os::unix::fs::symlink(to, &at).expect("symlink"),
        Put::Flicker(t) => {
            for _ in 0..10 {
                write(t.as_bytes());
                std::fs::remove_file(&at).expect("remove");
            }
        }
    }
}

/// Waits for the daemon's next reload after log offset `from`; returns what it logged.
fn next_reload(env: &Env, from: usize, what: &str) -> String {
    let start = Instant::now();
    loop {
        let log = env.daemon_log();
        let since = &log[from.min(log.len())..];
        if since.contains("configuration applied") || since.contains("configuration rejected") {
            // A rejection's lines follow its first one at once; let them land.
            std::thread::sleep(Duration::from_millis(50));
            return env.daemon_log()[from..].to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: no reload within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_configs_are_rejected_or_applied_while_requests_flow() {
    let (svc, port) = ("127.10.25.1", 25000);
    let env = env_with("hostile", port, &seed("c-header", svc, port), &[]);
    let pid = env.serving_pid();
    let to = format!("{svc}:{port}");
    let normal = env.spawn_client(
        "normal",
        &[
            "--to",
            &to,
            "--count",
            "200000",
            "--every-ms",
            "2",
            "--for-ms",
            "240000",
        ],
    );
    let mut report = Vec::new();
    let mut wrong = Vec::new();
    for (what, put_it, want) in cases() {
        let from = env.daemon_log().len();
        let t = Instant::now();
        put(&env, &put_it);
        let mut said = next_reload(&env, from, what);
        if matches!(put_it, Put::Flicker(_)) {
            // Several reloads may follow; the last must apply the folder as it is.
            std::thread::sleep(Duration::from_millis(1_500));
            said = env.daemon_log()[from..].to_string();
            let last = said.rfind("configuration ").expect("a reload");
            said = said[last..].to_string();
        }
        let took = t.elapsed();
        let ok = match want {
            Want::Applied => {
                said.contains("configuration applied") && !said.contains("configuration rejected")
            }
            Want::Rejected(text) => said.contains("configuration rejected") && said.contains(text),
        };
        if !ok {
            wrong.push(format!(
                "{what}: {}",
                said.chars().take(400).collect::<String>()
            ));
        }
        report.push(format!("{what}: {took:?}"));
        // Back to the good folder.
        let from = env.daemon_log().len();
        let at = env.config.join("hostile.yaml");
        if std::fs::symlink_metadata(&at).is_ok() {
            std::fs::remove_file(&at).expect("remove");
            let said = next_reload(&env, from, what);
            assert!(
                said.contains("configuration applied"),
                "{what}: after removal: {said}"
            );
        }
    }
    let s = normal.stop();
    let peak = status_kib(pid, "VmHWM:");
    eprintln!(
        "{}\nnormal client: {s}\npeak RSS {peak} KiB",
        report.join("\n")
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(s["failures"], 0, "{s}");
    // Every request on its rule (v0: no hellotest header), none on the kernel fallback.
    assert_eq!(s["by_backend"]["v0"], s["attempts"], "{s}");
    assert!(s["p99_us"].as_u64() < Some(100_000), "{s}");
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
    assert!(Path::new(&env.config.join("config.yaml")).exists());
}
