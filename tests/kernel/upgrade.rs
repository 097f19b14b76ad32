//! Upgrades: a daemon of another build takes over a pinned datapath with no window
//! in which connects go unsteered, and leaves one set of programs attached.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::addr;
use crate::harness::{Env, seed_config};

/// lb's `connect4` in the test cgroup as bpftool shows it: (program id, tag).
fn connect4(env: &Env) -> (u32, String) {
    let lines = env.attached_programs();
    let ids: Vec<u32> = lines
        .iter()
        .filter(|l| l.contains("lb_connect4"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(ids.len(), 1, "one connect4 attached:\n{}", lines.join("\n"));
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &ids[0].to_string()])
        .output()
        .expect("bpftool prog show");
    let text = String::from_utf8_lossy(&out.stdout);
    let tag = text
        .split_whitespace()
        .skip_while(|w| *w != "tag")
        .nth(1)
        .unwrap_or_else(|| panic!("no tag in {text}"))
        .to_string();
    (ids[0], tag)
}

/// The embedded object with `connect4` changed but doing the same: its first
/// `rN = 1` (a 64-bit move of a constant) rewritten as the 32-bit move `wN = 1`, which
/// zero-extends to the same value. Another build of connect4, as far as the kernel
/// can tell (its tag).
fn variant_object(dir: &Path) -> PathBuf {
    use object::{Object as _, ObjectSection as _};
    let mut bytes = lb::datapath::object::embedded().to_vec();
    let file = object::File::parse(&*bytes).expect("the embedded ELF");
    let section = file
        .section_by_name("cgroup/connect4")
        .expect("connect4's section");
    let (start, len) = section.file_range().expect("in the file");
    let (start, len) = (start as usize, len as usize);
    // BPF_ALU64 | BPF_MOV | BPF_K, source register 0, offset 0, immediate 1.
    let mov64_1 = |i: &[u8; 8]| i[0] == 0xb7 && i[1] & 0xf0 == 0 && i[2..] == [0, 0, 1, 0, 0, 0];
    let at = bytes[start..start + len]
        .as_chunks::<8>()
        .0
        .iter()
        .position(mov64_1)
        .expect("connect4 sets a register to 1 somewhere");
    bytes[start + at * 8] = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
    let path = dir.join("variant.o");
    std::fs::write(&path, bytes).expect("write the variant");
    path
}

/// A connect loop across two upgrades (to a build whose connect4 differs, and back):
/// no connect fails, the pinned link stays and runs the new program (bpftool shows
/// its tag), and one set of programs stays attached.
#[test]
fn upgrades_replace_programs_in_place_without_a_failed_connect() {
    let mut env = Env::new("upgrade");
    let (svc, port) = ("127.10.9.1", 10900u16);
    env.backend("v0", &[addr("127.0.0.2:10900")]);
    env.backend("v1", &[addr("127.0.0.3:10900")]);
    env.write_config(
        "backend.yaml",
        &seed_config(svc, port, "127.0.0.2", "127.0.0.3", 50, 50),
    );
    env.start_daemon(false);
    let (_, original) = connect4(&env);
    let variant = variant_object(&env.work);
    let to = format!("{svc}:{port}");
    let client = env.spawn_connect_loop(&to, 100_000, 60_000);
    std::thread::sleep(Duration::from_millis(200));
    // Upgrade: the old daemon stops (its programs keep steering), the new one starts.
    env.stop_daemons();
    env.start_daemon_env(false, &[], &[("LB_EBPF_OBJECT", variant.as_os_str())]);
    assert!(
        env.daemon_log()
            .contains("replaced the running program in place"),
        "{}",
        env.daemon_log()
    );
    let (_, upgraded) = connect4(&env);
    assert_ne!(upgraded, original, "the new build's connect4 runs");
    std::thread::sleep(Duration::from_millis(200));
    // And back: the embedded build replaces the variant.
    env.stop_daemons();
    env.start_daemon(false);
    let (_, back) = connect4(&env);
    assert_eq!(back, original);
    std::thread::sleep(Duration::from_millis(200));
    let s = client.stop();
    assert_eq!(s["failures"], 0, "{}", s["first_errors"]);
    assert!(s["attempts"].as_u64().unwrap_or(0) > 300, "{s}");
    env.assert_one_set_attached();
}

/// A build with another map layout pins under another folder: it attaches beside the
/// old programs, applies its plan, then removes the old layout — no failed connect on
/// the way, one set of programs after. (The old layout here is this build's, renamed
/// to the folder name lb used before fingerprints, `v2`: the upgrade every node that
/// ran that version takes.)
#[test]
fn a_new_layout_attaches_beside_the_old_and_retires_it() {
    let mut env = Env::new("relayout");
    let (svc, port) = ("127.10.9.2", 10901u16);
    env.backend("v0", &[addr("127.0.0.2:10901")]);
    env.backend("v1", &[addr("127.0.0.3:10901")]);
    env.write_config(
        "backend.yaml",
        &seed_config(svc, port, "127.0.0.2", "127.0.0.3", 50, 50),
    );
    env.start_daemon(false);
    env.kill_daemons();
    let pins = lb::datapath::Pins::new(&env.bpffs);
    let old = env.bpffs.join("v2");
    std::fs::rename(&pins.root, &old).expect("rename the layout folder");
    std::fs::remove_file(env.bpffs.join("current")).expect("current");
    let to = format!("{svc}:{port}");
    // The renamed layout still steers: its links are pinned.
    let s = env.probe(&["--to", &to, "--count", "20"]);
    assert_eq!(s["failures"], 0, "{s}");
    let client = env.spawn_connect_loop(&to, 100_000, 60_000);
    std::thread::sleep(Duration::from_millis(200));
    env.start_daemon(false);
    crate::harness::wait_for(Duration::from_secs(10), "the old layout to go", || {
        !old.exists()
    });
    std::thread::sleep(Duration::from_millis(200));
    let s = client.stop();
    assert_eq!(s["failures"], 0, "{}", s["first_errors"]);
    let v0 = s["by_backend"]["v0"].as_u64().unwrap_or(0);
    let v1 = s["by_backend"]["v1"].as_u64().unwrap_or(0);
    assert!(v0 > 0 && v1 > 0, "{s}");
    env.assert_one_set_attached();
    assert!(
        env.daemon_log()
            .contains("removed the datapath of another layout"),
        "{}",
        env.daemon_log()
    );
    let listing = || {
        std::fs::read_dir(&env.bpffs)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        std::fs::read_link(env.bpffs.join("current"))
            .ok()
            .as_deref(),
        pins.root.file_name().map(std::path::Path::new),
        "{:?}\n{}",
        listing(),
        env.daemon_log()
    );
}
