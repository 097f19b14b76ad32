use super::super::locate::split;
use super::*;

/// The error `split` gives `text`, as said.
fn refused(text: &str) -> String {
    match split(text) {
        Ok(docs) => panic!("accepted {} document(s)", docs.len()),
        Err(e) => format!("line {}: {}", e.line, e.message),
    }
}

#[test]
fn a_billion_laughs_is_refused_where_it_goes_past_the_bound() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, prev) in ('b'..='i').zip('a'..) {
        let row = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("{i}: &{i} [{row}]\n"));
    }
    let e = refused(&text);
    assert!(e.contains("aliases expand the document"), "{e}");
}

#[test]
fn a_long_string_named_many_times_is_refused() {
    let long = "x".repeat(64 * 1024);
    let mut text = format!("s: &s \"{long}\"\nl:\n");
    for _ in 0..100 {
        text.push_str("- *s\n");
    }
    let e = refused(&text);
    assert!(
        e.starts_with("line ") && e.contains("aliases expand"),
        "{e}"
    );
}

#[test]
fn reusing_a_block_is_fine() {
    // A VirtualService route block named once and reused a few times.
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [a, b]
  http:
  - match: [{uri: {prefix: /a}}]
    route: &r [{destination: {host: a, subset: v0}, weight: 90}, {destination: {host: a, subset: v1}, weight: 10}]
  - match: [{uri: {prefix: /b}}]
    route: *r
  - route: *r
";
    assert_eq!(split(text).expect("loads").len(), 1);
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    // 100,000 levels: yaml_rust2's recursive loader would overflow the stack here
    // (its scanner bounds flow nesting itself).
    let flow = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(refused(&flow), "line 1: recursion limit exceeded");
    let block: String = (0..1_000)
        .map(|i| format!("{}a:\n", "  ".repeat(i)))
        .collect();
    assert_eq!(
        refused(&block),
        format!("line 65: nested deeper than {MAX_DEPTH} levels")
    );
    let fine = format!(
        "a: {}1{}",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert!(split(&fine).is_ok());
}

#[test]
fn too_many_documents_are_refused() {
    let text = "---\na: 1\n".repeat(MAX_DOCUMENTS + 1);
    let e = refused(&text);
    assert!(
        e.ends_with(&format!("more than {MAX_DOCUMENTS} documents in one file")),
        "{e}"
    );
}

/// The error loading `dir` gives, as said.
fn dir_refused(dir: &Path) -> String {
    super::super::load_dir(dir)
        .expect_err("refused")
        .to_string()
}

/// A scratch directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("lb-limits-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn files_lb_cannot_read_whole_are_errors_naming_them() {
    let d = Dir::new("files");
    let big = d.0.join("big.yaml");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(MAX_FILE_BYTES + 1))
        .expect("sparse file");
    let e = dir_refused(&d.0);
    assert!(
        e.contains("big.yaml") && e.contains("larger than 32 MiB"),
        "{e}"
    );
    std::fs::remove_file(&big).expect("rm");

    std::fs::write(d.0.join("latin1.yaml"), b"a: 1\nb: caf\xe9\n").expect("write");
    let e = dir_refused(&d.0);
    assert!(e.ends_with("latin1.yaml:2: not UTF-8"), "{e}");
    std::fs::remove_file(d.0.join("latin1.yaml")).expect("rm");

    // A FIFO would block a reader for ever; a symlink loop never resolves.
    let fifo = std::ffi::CString::new(d.0.join("pipe.yaml").to_str().expect("utf-8")).expect("c");
    // SAFETY: mkfifo reads the path passed.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let e = dir_refused(&d.0);
    assert!(e.contains("pipe.yaml: not a regular file"), "{e}");
    assert!(matches!(
        read(&d.0.join("pipe.yaml")),
        Err(LoadError::NotAFile(_))
    ));
    std::fs::remove_file(d.0.join("pipe.yaml")).expect("rm");
    std::os::unix::fs::symlink("loop.yaml", d.0.join("loop.yaml")).expect("symlink");
    let e = dir_refused(&d.0);
    assert!(
        e.contains("loop.yaml") && e.contains("symbolic links"),
        "{e}"
    );
    std::fs::remove_file(d.0.join("loop.yaml")).expect("rm");

    // A symlink to nothing (a file gone since the listing) is as if absent.
    std::os::unix::fs::symlink("gone.yaml", d.0.join("dangling.yaml")).expect("symlink");
    assert!(super::super::load_dir(&d.0).expect("loads").0.is_empty());
}
