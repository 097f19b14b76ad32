//! Load: a directory of multi-document Istio YAML → typed resources with their origin.
//!
//! Every document is checked for YAML syntax, a known `apiVersion` / `kind`, and the
//! Istio schema (unknown fields are errors). Problems become [`Diagnostic`]s naming the
//! file, line and field; the model step validates meaning.

pub mod docs;
mod fast;
pub mod istio;
pub mod limits;
pub mod locate;
mod simple_yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::diagnostic::{Diagnostic, Origin};
pub use docs::Docs;

/// Reading the configuration directory failed (not a problem in its contents).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or one of its files could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a regular file (lb reads files and symlinks to them)")]
    NotAFile(PathBuf),
    #[error("{path}: larger than {} MiB, the most lb reads from one file", max >> 20)]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{dir}: its YAML files have more than {} MiB together, the most lb reads", max >> 20)]
    TooLargeTogether { dir: PathBuf, max: u64 },
    #[error("{path}:{line}: not UTF-8")]
    NotUtf8 { path: PathBuf, line: usize },
}

/// What is wrong with a document's form (the model checks its meaning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("YAML syntax error: {0}")]
    Syntax(String),
    #[error("a document must be a mapping with apiVersion, kind, metadata and spec")]
    NotAMapping,
    #[error("missing kind")]
    NoKind,
    #[error("unknown kind {0:?}: lb reads ServiceEntry, DestinationRule and VirtualService")]
    UnknownKind(String),
    #[error("unknown apiVersion {api_version:?} for {kind}: expected networking.istio.io/v1")]
    UnknownApiVersion { api_version: String, kind: String },
    #[error("name is required")]
    NoName,
    /// A field the Istio schema does not have (a typo: the nearest field name, if any).
    #[error("unknown field {field:?}{}", .suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    UnknownField {
        field: String,
        suggestion: Option<String>,
    },
    /// A value of the wrong type (serde's words, said for YAML).
    #[error("{0}")]
    Schema(String),
}

/// One resource of the configuration.
#[derive(Debug, Clone)]
pub enum Resource {
    ServiceEntry(Box<istio::Resource<istio::ServiceEntrySpec>>),
    DestinationRule(Box<istio::Resource<istio::DestinationRuleSpec>>),
    VirtualService(Box<istio::Resource<istio::VirtualServiceSpec>>),
}

impl Resource {
    pub fn metadata(&self) -> &istio::Metadata {
        match self {
            Resource::ServiceEntry(r) => &r.metadata,
            Resource::DestinationRule(r) => &r.metadata,
            Resource::VirtualService(r) => &r.metadata,
        }
    }
}

/// A resource with where it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The typed resource while it is needed; a file's is dropped between changes
    /// ([`release`](Self::release)) and read again from its text when asked for.
    parsed: std::sync::Mutex<Option<Arc<Resource>>>,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// One copy per file (of those a thread loads one after the other: see
    /// [`shared_path`]).
    pub file: Arc<Path>,
    pub doc: locate::Document,
}

/// `file` as the last document a thread loaded had it, if the same: 10,000 services
/// in one file held 30,000 copies of its path.
fn shared_path(file: &Path) -> Arc<Path> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<Arc<Path>>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some(p) if **p == *file => p.clone(),
        _ => last.insert(file.into()).clone(),
    })
}

impl Loaded {
    pub fn new(
        resource: Resource,
        kind: &'static str,
        namespace: String,
        name: String,
        file: &Path,
        doc: locate::Document,
    ) -> Self {
        Loaded {
            parsed: std::sync::Mutex::new(Some(Arc::new(resource))),
            kind,
            namespace,
            name,
            file: shared_path(file),
            doc,
        }
    }

    fn parsed(&self) -> std::sync::MutexGuard<'_, Option<Arc<Resource>>> {
        self.parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The typed resource (read again from the document if it was released).
    pub fn resource(&self) -> Arc<Resource> {
        let mut parsed = self.parsed();
        if let Some(r) = &*parsed {
            return r.clone();
        }
        let resource_name = format!("{} {}/{}", self.kind, self.namespace, self.name);
        let again = parse_as(
            self.kind,
            &self.doc,
            &self.file,
            &resource_name,
            &mut Vec::new(),
        )
        .expect("a document that parsed once parses again");
        let r = Arc::new(again);
        *parsed = Some(r.clone());
        r
    }

    /// Drops the typed resource if it can be read again (a file's document): between
    /// changes the daemon keeps a file's text, a tenth of its typed form.
    pub fn release(&self) {
        if !self.doc.text.is_empty() {
            *self.parsed() = None;
        }
    }

    /// A `metadata.annotations` value of the resource.
    pub fn annotation(&self, key: &str) -> Option<String> {
        self.resource().metadata().annotations.get(key).cloned()
    }

    /// Origin of `path` inside this resource.
    pub fn at(&self, path: &str) -> Origin {
        Origin {
            file: self.file.to_path_buf(),
            line: self.doc.line_of(path),
            resource: format!("{} {}/{}", self.kind, self.namespace, self.name),
        }
    }
}

/// Accepted API groups and versions (Istio serves the same schema under each).
const API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// Whether lb reads the file at `path`: a YAML file, not hidden (so not a ConfigMap
/// mount's `..data` folders, nor an editor's `.swp`).
pub fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The YAML files of `dir`, sorted by name. Hidden entries (a ConfigMap mount's
/// `..data` folders) are skipped; symlinks are followed; a file gone since the listing
/// is skipped (the watcher reloads again for its removal). Anything else named like a
/// YAML file that is not a regular file (a FIFO, a symlink loop) is an error, and so are
/// files larger than `limits` allow together.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Read { path, source }
    };
    let mut files = Vec::new();
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(read(dir))? {
        let path = entry.map_err(read(dir))?.path();
        if !is_config_file(&path) {
            continue;
        }
        let meta = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            m => m.map_err(read(&path))?,
        };
        if !meta.is_file() {
            return Err(LoadError::NotAFile(path));
        }
        total += meta.len();
        files.push(path);
    }
    if total > limits::MAX_TOTAL_BYTES {
        return Err(LoadError::TooLargeTogether {
            dir: dir.to_path_buf(),
            max: limits::MAX_TOTAL_BYTES,
        });
    }
    files.sort();
    Ok(files)
}

/// Loads every resource of `dir`. Content problems are returned as diagnostics beside
/// the resources that did load.
pub fn load_dir(dir: &Path) -> Result<(Docs, Vec<Diagnostic>), LoadError> {
    Cache::default().load_dir(dir)
}

/// What a file was when it was read: any write or rename changes one of these (ctime
/// moves on every content change and cannot be set back by tools that copy mtimes).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    /// The file's stamp if it can be trusted later: timestamps are coarse (ctime ticks
    /// every few ms), so a file changed within the last second could change again with
    /// the same stamp; such a file is read and hashed on every reload (as git treats
    /// "racily clean" files).
    fn settled(path: &Path) -> Option<Stamp> {
        let s = Stamp::of(path)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos() as i128;
        (now - s.ctime_ns.max(s.mtime_ns) > 1_000_000_000).then_some(s)
    }

    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// One file as last read: its stamp, content hash, resources and problems.
struct CachedFile {
    stamp: Option<Stamp>,
    hash: u64,
    loaded: docs::Run,
    diags: Vec<Diagnostic>,
}

/// What each file loaded to: a reload parses only the files whose bytes changed (a
/// one-line edit among 10,000 services re-reads one file), and does not even read a
/// file whose stamp is unchanged (hashing a large unchanged file showed in profiles).
#[derive(Default)]
pub struct Cache {
    files: std::collections::HashMap<PathBuf, CachedFile>,
}

impl Cache {
    /// Like [`load_dir`], reusing the results of files whose content is unchanged.
    pub fn load_dir(&mut self, dir: &Path) -> Result<(Docs, Vec<Diagnostic>), LoadError> {
        let mut loaded = Docs::default();
        let mut diags = Vec::new();
        let files = config_files(dir)?;
        self.files.retain(|path, _| files.contains(path));
        for file in files {
            let stamp = Stamp::settled(&file);
            if let Some(c) = self.files.get(&file)
                && stamp.is_some()
                && c.stamp == stamp
            {
                loaded.push(c.loaded.clone());
                diags.extend(c.diags.iter().cloned());
                continue;
            }
            let text = match limits::read(&file) {
                // Removed since the listing: as if it had not been listed.
                Err(LoadError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    self.files.remove(&file);
                    continue;
                }
                read => read?,
            };
            let hash = hash(&text);
            match self.files.get_mut(&file) {
                Some(c) if c.hash == hash => {
                    c.stamp = stamp;
                    loaded.push(c.loaded.clone());
                    diags.extend(c.diags.iter().cloned());
                }
                _ => {
                    let (mut l, mut d) = (Vec::new(), Vec::new());
                    load_text(&file, &text, &mut l, &mut d);
                    // Shared with the cache: a reload of other files copies a pointer.
                    let l: docs::Run = l.into_iter().map(Arc::new).collect();
                    loaded.push(l.clone());
                    diags.extend(d.iter().cloned());
                    self.files.insert(
                        file,
                        CachedFile {
                            stamp,
                            hash,
                            loaded: l,
                            diags: d,
                        },
                    );
                }
            }
        }
        Ok((loaded, diags))
    }
}

/// A file's content hash (to tell a rewrite with the same bytes from a change).
fn hash(text: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0).hash_one(text)
}

impl Cache {
    /// Checks again the files that were read within a second of their last write
    /// (their stamp could not be trusted then): once settled, one with the same bytes
    /// keeps its stamp, and the next reload does not read it. True when one changed
    /// or cannot be read: reload. (The daemon calls this while it is idle, so that the
    /// next change does not pay for reading a large file again.)
    pub fn settle(&mut self) -> bool {
        let mut changed = false;
        for (path, c) in self.files.iter_mut().filter(|(_, c)| c.stamp.is_none()) {
            let Some(stamp) = Stamp::settled(path) else {
                continue;
            };
            match limits::read(path) {
                Ok(text) if hash(&text) == c.hash => c.stamp = Some(stamp),
                _ => changed = true,
            }
        }
        changed
    }
}

/// Files smaller than this are parsed on one core (threads cost more than they save).
const PARALLEL_BYTES: usize = 256 << 10;

/// Loads the documents of one file's text; a large file is parsed on every core, in
/// runs of whole documents, with the same results in the same order as on one. Runs
/// of plain documents are read in one pass (fast.rs), the others exactly.
pub fn load_text(file: &Path, text: &str, out: &mut Vec<Loaded>, diags: &mut Vec<Diagnostic>) {
    load_text_by(file, text, out, diags, load_run);
}

/// [`load_text`] on the exact path alone (the `config` fuzz target checks that the
/// one-pass path loads what it loads).
pub fn load_text_exact(
    file: &Path,
    text: &str,
    out: &mut Vec<Loaded>,
    diags: &mut Vec<Diagnostic>,
) {
    load_text_by(file, text, out, diags, exact_run);
}

type RunLoader = fn(&Path, &str, usize) -> Result<Run, locate::SyntaxError>;

fn load_text_by(
    file: &Path,
    text: &str,
    out: &mut Vec<Loaded>,
    diags: &mut Vec<Diagnostic>,
    load_run: RunLoader,
) {
    let cores = if text.len() < PARALLEL_BYTES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let runs = locate::chunks(text, cores);
    let parsed: Vec<Result<Run, locate::SyntaxError>> = if runs.len() == 1 {
        vec![load_run(file, runs[0].0, runs[0].1)]
    } else {
        std::thread::scope(|s| {
            let spawned: Vec<_> = runs
                .iter()
                .map(|(run, base)| s.spawn(move || load_run(file, run, *base)))
                .collect();
            spawned
                .into_iter()
                .map(|h| h.join().expect("a load thread panicked"))
                .collect()
        })
    };
    let mut docs = 0;
    let mut runs_out = Vec::with_capacity(parsed.len());
    for run in parsed {
        let syntax = |e: locate::SyntaxError| {
            let origin = Origin {
                file: file.to_path_buf(),
                line: e.line,
                resource: String::new(),
            };
            Diagnostic::error(origin, "", Invalid::Syntax(e.message))
        };
        match run {
            // The first syntax error of the file is its only problem (as on one core).
            Err(e) => return diags.push(syntax(e)),
            Ok(r) if docs + r.documents > limits::MAX_DOCUMENTS => {
                let line = r.first_lines[limits::MAX_DOCUMENTS - docs];
                let message = limits::Exceeded::Documents.to_string();
                return diags.push(syntax(locate::SyntaxError { line, message }));
            }
            Ok(r) => {
                docs += r.documents;
                runs_out.push(r);
            }
        }
    }
    for r in runs_out {
        out.extend(r.loaded);
        diags.extend(r.diags);
    }
}

/// What one run of documents loaded to.
struct Run {
    loaded: Vec<Loaded>,
    diags: Vec<Diagnostic>,
    /// Documents in the run (the file's bound counts them together).
    documents: usize,
    /// First line of each document, to say where a file went past the bound.
    first_lines: Vec<usize>,
}

/// Loads one run of documents that starts after `base` lines of the file: in one
/// pass if they are plain, else exactly.
fn load_run(file: &Path, text: &str, base: usize) -> Result<Run, locate::SyntaxError> {
    fast::load_run(file, text, base).map_or_else(|| exact_run(file, text, base), Ok)
}

/// Splits and loads one run of documents that starts after `base` lines of the file.
fn exact_run(file: &Path, text: &str, base: usize) -> Result<Run, locate::SyntaxError> {
    let docs = locate::split(text).map_err(|e| locate::SyntaxError {
        line: e.line + base,
        message: e.message,
    })?;
    let mut run = Run {
        loaded: Vec::with_capacity(docs.len()),
        diags: Vec::new(),
        documents: docs.len(),
        first_lines: Vec::with_capacity(docs.len()),
    };
    for (mut doc, head) in docs {
        doc.first_line += base;
        doc.line_offset += base;
        run.first_lines.push(doc.first_line);
        if let Some(l) = load_document(file, doc, head, &mut run.diags) {
            run.loaded.push(l);
        }
    }
    Ok(run)
}

fn load_document(
    file: &Path,
    doc: locate::Document,
    head: locate::Head,
    diags: &mut Vec<Diagnostic>,
) -> Option<Loaded> {
    let origin = |path: &str, resource: String| Origin {
        file: file.to_path_buf(),
        line: doc.line_of(path),
        resource,
    };
    if !head.mapping {
        diags.push(Diagnostic::error(
            origin("", String::new()),
            "",
            Invalid::NotAMapping,
        ));
        return None;
    }
    let (kind, api_version) = (
        head.kind.unwrap_or_default(),
        head.api_version.unwrap_or_default(),
    );
    let name = head.name.unwrap_or_default();
    let namespace = head.namespace.unwrap_or_else(|| "default".to_string());
    let resource_name = format!("{kind} {namespace}/{name}");
    let kind_static: &'static str = match kind.as_str() {
        "ServiceEntry" => "ServiceEntry",
        "DestinationRule" => "DestinationRule",
        "VirtualService" => "VirtualService",
        "" => {
            diags.push(Diagnostic::error(
                origin("kind", String::new()),
                "kind",
                Invalid::NoKind,
            ));
            return None;
        }
        other => {
            diags.push(Diagnostic::error(
                origin("kind", resource_name),
                "kind",
                Invalid::UnknownKind(other.to_string()),
            ));
            return None;
        }
    };
    if !API_VERSIONS.contains(&api_version.as_str()) {
        diags.push(Diagnostic::error(
            origin("apiVersion", resource_name),
            "apiVersion",
            Invalid::UnknownApiVersion { api_version, kind },
        ));
        return None;
    }
    if name.is_empty() {
        diags.push(Diagnostic::error(
            origin("metadata", resource_name),
            "metadata.name",
            Invalid::NoName,
        ));
        return None;
    }
    let parsed = parse_as(kind_static, &doc, file, &resource_name, diags)?;
    Some(Loaded::new(parsed, kind_static, namespace, name, file, doc))
}

/// Deserialises a document of `kind` (one of the three lb reads).
fn parse_as(
    kind: &str,
    doc: &locate::Document,
    file: &Path,
    resource_name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Resource> {
    match kind {
        "ServiceEntry" => {
            typed(doc, file, resource_name, diags).map(|r| Resource::ServiceEntry(Box::new(r)))
        }
        "DestinationRule" => {
            typed(doc, file, resource_name, diags).map(|r| Resource::DestinationRule(Box::new(r)))
        }
        _ => typed(doc, file, resource_name, diags).map(|r| Resource::VirtualService(Box::new(r))),
    }
}

/// The kinds lb reads, by name.
fn kind_of(kind: &str) -> Option<&'static str> {
    ["ServiceEntry", "DestinationRule", "VirtualService"]
        .into_iter()
        .find(|k| *k == kind)
}

fn object_or_empty(v: &serde_json::Value) -> serde_json::Value {
    if v.is_object() {
        v.clone()
    } else {
        serde_json::json!({})
    }
}

/// One Istio object read from the Kubernetes API (a JSON object with `apiVersion`,
/// `kind`, `metadata` and `spec`): typed like a file's document, with problems naming
/// the object and field. Metadata lb does not read (uid, managedFields, ...) is left
/// out before the schema check.
pub fn load_object(value: &serde_json::Value, diags: &mut Vec<Diagnostic>) -> Option<Loaded> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let meta = &value["metadata"];
    let (name, namespace) = (text(&meta["name"]), text(&meta["namespace"]));
    let namespace = if namespace.is_empty() {
        "default".to_string()
    } else {
        namespace
    };
    let kind = kind_of(value["kind"].as_str().unwrap_or_default())?;
    let resource = format!("{kind} {namespace}/{name}");
    let object = serde_json::json!({
        "apiVersion": value["apiVersion"],
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": object_or_empty(&meta["labels"]),
            "annotations": object_or_empty(&meta["annotations"]),
        },
        "spec": value.get("spec").cloned().unwrap_or_default(),
    });
    let origin = |_: &str| Origin {
        file: PathBuf::new(),
        line: 0,
        resource: resource.clone(),
    };
    fn parse<T: DeserializeOwned>(
        object: &serde_json::Value,
        origin: impl Fn(&str) -> Origin,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(object) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let (path, message) = schema_message(&path, &e.into_inner().to_string());
                diags.push(Diagnostic::error(origin(&path), path, message));
                None
            }
        }
    }
    let parsed = match kind {
        "ServiceEntry" => {
            parse(&object, origin, diags).map(|r| Resource::ServiceEntry(Box::new(r)))
        }
        "DestinationRule" => {
            parse(&object, origin, diags).map(|r| Resource::DestinationRule(Box::new(r)))
        }
        _ => parse(&object, origin, diags).map(|r| Resource::VirtualService(Box::new(r))),
    }?;
    Some(Loaded::new(
        parsed,
        kind,
        namespace,
        name,
        Path::new(""),
        locate::Document::detached(),
    ))
}

/// Deserialises a document into its Istio type; a schema error names the field.
fn typed<T: DeserializeOwned>(
    doc: &locate::Document,
    file: &Path,
    resource: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let de = serde_yaml::Deserializer::from_str(&doc.text);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let line = inner
                .location()
                .map_or_else(|| doc.line_of(&path), |l| l.line() + doc.line_offset);
            let (path, message) = schema_message(&path, &inner.to_string());
            let origin = Origin {
                file: file.to_path_buf(),
                line,
                resource: resource.to_string(),
            };
            diags.push(Diagnostic::error(origin, path, message));
            None
        }
    }
}

/// Turns serde's message into Istio-like wording: `unknown field "rout"` (with a
/// suggestion) instead of serde's list of every expected field.
fn schema_message(path: &str, raw: &str) -> (String, Invalid) {
    // serde_yaml prefixes its own path ("spec.http[0]: ..."); drop it, we have ours.
    let msg = match raw.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') => rest,
        _ => raw,
    };
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let full = if path.is_empty() || path.ends_with(&format!(".{field}")) || path == field {
            path.to_string()
        } else {
            format!("{path}.{field}")
        };
        let full = if full.is_empty() {
            field.to_string()
        } else {
            full
        };
        let suggestion = suggest(field, &candidates).map(str::to_string);
        return (
            full,
            Invalid::UnknownField {
                field: field.to_string(),
                suggestion,
            },
        );
    }
    // serde names Rust types; say what YAML value is expected instead.
    let msg = msg
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a borrowed string", "expected a string");
    (path.to_string(), Invalid::Schema(msg))
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Vec<Loaded>, Vec<Diagnostic>) {
        let (mut out, mut diags) = (Vec::new(), Vec::new());
        load_text(Path::new("c.yaml"), text, &mut out, &mut diags);
        (out, diags)
    }

    #[test]
    fn unknown_field_names_path_line_and_suggestion() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  hosts: [a]\n  http:\n  - rout:\n    - destination: {host: a}\n";
        let (out, diags) = load(text);
        assert!(out.is_empty());
        assert_eq!(
            diags[0].to_string(),
            "c.yaml:8: VirtualService default/vs: spec.http[0].rout: unknown field \"rout\" (did you mean \"route\"?)"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: prod}\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: ninety\n";
        let (_, diags) = load(text);
        let line = diags[0].to_string();
        assert!(
            line.starts_with(
                "c.yaml:9: VirtualService prod/vs: spec.http[0].route[0].weight: invalid type"
            ),
            "{line}"
        );
    }

    #[test]
    fn unknown_kind_and_api_version() {
        let (_, d) = load("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n");
        assert_eq!(
            d[0].to_string(),
            "c.yaml:2: Service default/s: kind: unknown kind \"Service\": lb reads ServiceEntry, DestinationRule and VirtualService"
        );
        let (_, d) = load(
            "apiVersion: networking.istio.io/v2\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {}\n",
        );
        assert!(
            d[0].to_string()
                .starts_with("c.yaml:1: ServiceEntry default/s: apiVersion: unknown apiVersion"),
            "{}",
            d[0]
        );
    }

    #[test]
    fn loads_multi_document_files() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec: {host: x}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b, namespace: ns}\nspec: {hosts: [x]}\n";
        let (out, d) = load(text);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(out.len(), 2);
        assert_eq!(
            (
                out[1].kind,
                out[1].namespace.as_str(),
                out[1].doc.first_line
            ),
            ("VirtualService", "ns", 6)
        );
    }

    /// A large file parsed on every core loads to what one core makes of it: the same
    /// resources and problems, in order, with the same lines; runs start at document
    /// markers only.
    #[test]
    fn a_large_file_loads_the_same_on_every_core() {
        let mut text = String::new();
        for i in 0..3000 {
            text.push_str(&match i {
                1234 => "---\n- not a mapping\n".to_string(),
                2999 => format!("---\nkind: VirtualService\napiVersion: networking.istio.io/v1\nmetadata: {{name: v{i}}}\nspec:\n  hosts: [h]\n  htp: []\n"),
                _ => format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: d{i}\n  namespace: n\nspec: {{host: h{i}}}\n"),
            });
        }
        assert!(text.len() > PARALLEL_BYTES);
        let runs = locate::chunks(&text, 2);
        assert_eq!(runs.len(), 2);
        assert!(runs[1].0.starts_with("---\n"));
        assert_eq!(
            runs[1].1,
            text[..text.len() - runs[1].0.len()].lines().count()
        );
        let (parallel, pd) = load(&text);
        let one = load_run(Path::new("c.yaml"), &text, 0).expect("valid YAML");
        let key = |l: &Loaded| {
            (
                l.kind,
                l.name.clone(),
                l.doc.first_line,
                l.doc.line_of("spec.host"),
            )
        };
        assert_eq!(
            parallel.iter().map(key).collect::<Vec<_>>(),
            one.loaded.iter().map(key).collect::<Vec<_>>()
        );
        let said = |d: &[Diagnostic]| d.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(said(&pd), said(&one.diags));
        assert_eq!(parallel.len(), 2998);
        assert_eq!(pd.len(), 2, "{pd:?}");
        assert!(
            pd[1].to_string().contains("unknown field \"htp\""),
            "{}",
            pd[1]
        );
    }

    fn dr(host: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: a}}\nspec: {{host: {host}}}\n"
        )
    }

    fn host_of(l: &Loaded) -> String {
        match &*l.resource() {
            Resource::DestinationRule(r) => r.spec.host.clone().unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Files read within a second of their last write are read again once settled:
    /// one with the same bytes is trusted by its stamp from then on, one that changed
    /// asks for a reload.
    #[test]
    fn fresh_files_are_checked_again_once_settled() {
        let (dir, a, b) = two_files("settle");
        let mut cache = Cache::default();
        cache.load_dir(&dir).unwrap();
        assert!(cache.files.values().all(|c| c.stamp.is_none()), "fresh");
        // Rewritten after the read, same length: only its bytes tell.
        std::fs::write(&b, dr("x2")).unwrap();
        assert!(!cache.settle(), "nothing is settled yet, nothing read");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(cache.settle(), "b.yaml changed");
        assert!(cache.files[&a].stamp.is_some(), "a.yaml is trusted now");
        assert!(cache.files[&b].stamp.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A folder of its own with a.yaml (host h1) and b.yaml (host x1).
    fn two_files(test: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lb-{test}-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.yaml"), dir.join("b.yaml"));
        std::fs::write(&a, dr("h1")).unwrap();
        std::fs::write(&b, dr("x1")).unwrap();
        (dir, a, b)
    }

    /// The cache reuses unchanged files (the same `Arc`s) and never misses a change:
    /// a same-length rewrite within one timestamp tick is read again, and a file touched
    /// with the same bytes keeps its parse.
    #[test]
    fn cache_reuses_unchanged_files_and_sees_same_length_rewrites() {
        let (dir, a, b) = two_files("cache");
        let mut cache = Cache::default();
        let (first, _) = cache.load_dir(&dir).unwrap();
        for host in ["h2", "h3", "h4"] {
            std::fs::write(&a, dr(host)).unwrap();
            let (now, _) = cache.load_dir(&dir).unwrap();
            assert_eq!(host_of(&now.to_vec()[0]), host);
            assert!(
                Arc::ptr_eq(&first.runs()[1], &now.runs()[1]),
                "b.yaml was parsed again"
            );
        }
        // Touched without a content change: read again, same bytes, same parse.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&b)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (before, _) = cache.load_dir(&dir).unwrap();
        let (after, _) = cache.load_dir(&dir).unwrap();
        assert!(Arc::ptr_eq(&before.runs()[1], &after.runs()[1]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
