//! Checks of the workspace's layout, read from its sources and from cargo:
//! no crate's modules import each other in a cycle, and the crates meant to
//! stay lean do not pull in the async runtime, the Kubernetes client or the
//! query engine. Needs nothing but cargo; no cluster, no root.

#![allow(
    clippy::unwrap_used,
    reason = "in a test a failed unwrap is a failed assertion"
)]

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs,
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
};

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

/// Crates that must not depend, even indirectly, on a family of crates:
/// the capture path and the types shared with the eBPF programs stay free of
/// the async runtime, the Kubernetes client and the query engine. Add a row
/// to hold another crate to the same rule.
///
/// The capture path reads the API types from `crds`, which brings
/// `kube-core` and kube's derive macros (the types, no client): those are
/// allowed, the client and its runtime are not.
const LEAN_CRATES: &[(&str, &[&str])] = &[
    (
        "probe-capture",
        &[
            "tokio",
            "kube-client",
            "kube-runtime",
            "datafusion",
            "tonic",
            "hyper",
        ],
    ),
    ("probe-common", &["tokio", "kube", "datafusion"]),
];

#[test]
fn lean_crates_do_not_depend_on_heavy_ones() {
    let mut failures = Vec::new();
    for (package, banned) in LEAN_CRATES {
        if let Err(failure) = check_lean(package, banned) {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs `cargo tree` for the package's normal dependencies and names every
/// banned crate found; a package that does not exist is a failure too.
fn check_lean(package: &str, banned: &[&str]) -> Result<(), String> {
    let output = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .output()
        .map_err(|e| format!("cannot run cargo tree: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("did not match any packages") {
            return Err(format!(
                "{package}: no such package in the workspace, so nothing proves it stays free \
                 of {banned:?}; cargo tree said:\n{stderr}"
            ));
        }
        return Err(format!("{package}: cargo tree failed:\n{stderr}"));
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let found = banned_in_tree(&tree, banned);
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{package} depends on {}; it must stay free of {banned:?} (see `cargo tree -p \
             {package} -e normal -i CRATE` for the path)",
            found.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// The crates of a `cargo tree --prefix none` listing that belong to a
/// banned family: the crate itself or one named after it (`kube-client`).
fn banned_in_tree(tree: &str, banned: &[&str]) -> BTreeSet<String> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            banned.iter().any(|family| {
                *name == *family
                    || name
                        .strip_prefix(family)
                        .is_some_and(|rest| rest.starts_with(['-', '_']))
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn banned_families_match_their_members_only() {
    let tree = "probe-capture v0.1.0 (/src/probe-capture)\nkube-client v5.0.0\n\
                tokio v1.47.0 (*)\ntokio-stream v0.1.17\nkuberay v1.0.0\nbytes v1.10.1\n";
    let found = banned_in_tree(tree, &["tokio", "kube", "datafusion"]);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["kube-client", "tokio", "tokio-stream"]
    );
}

#[test]
fn no_module_import_cycles() {
    let mut cycles = Vec::new();
    for (name, root) in crate_roots() {
        let crate_modules = CrateModules::load(&root);
        cycles.extend(
            crate_modules
                .cycles()
                .into_iter()
                .map(|cycle| format!("{name}: {cycle}")),
        );
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other in a cycle (a module and its descendants count as \
         one; each arrow names one reference):\n{}",
        cycles.join("\n")
    );
}

/// The root source file of every library and binary of the workspace, named
/// `package (lib)` or `package (bin NAME)`.
fn crate_roots() -> Vec<(String, PathBuf)> {
    let output = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let mut roots = Vec::new();
    for package in metadata["packages"].as_array().expect("a package list") {
        let package_name = package["name"].as_str().expect("a package name");
        for target in package["targets"].as_array().expect("a target list") {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .expect("target kinds")
                .iter()
                .filter_map(|k| k.as_str())
                .collect();
            let name = if kinds
                .iter()
                .any(|k| k.ends_with("lib") || *k == "proc-macro")
            {
                format!("{package_name} (lib)")
            } else if kinds.contains(&"bin") {
                format!(
                    "{package_name} (bin {})",
                    target["name"].as_str().unwrap_or("?")
                )
            } else {
                // Tests, examples, benches and build scripts are crates of
                // their own, outside src/'s module tree.
                continue;
            };
            let root = target["src_path"].as_str().expect("a src_path");
            roots.push((name, PathBuf::from(root)));
        }
    }
    assert!(!roots.is_empty(), "cargo metadata lists no crate");
    roots
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The file relative to the workspace, if it is in it.
fn relative(file: &Path) -> PathBuf {
    let root = workspace_root();
    file.strip_prefix(&root).unwrap_or(file).to_owned()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits in the workspace")
        .to_owned()
}

/// A module, as its path from the crate root (empty for the root).
type ModulePath = Vec<String>;

/// The modules of one crate and which module refers to which.
struct CrateModules {
    modules: BTreeSet<ModulePath>,
    /// Each module's own code (without its inline child modules' code),
    /// with the file it is in.
    sources: Vec<(ModulePath, PathBuf, TokenStream)>,
}

impl CrateModules {
    /// Reads the crate whose root file is `root`, following `mod NAME;`
    /// declarations to the files of its modules.
    fn load(root: &Path) -> Self {
        let mut crate_modules = Self {
            modules: BTreeSet::new(),
            sources: Vec::new(),
        };
        let dir = root.parent().expect("a root file in a folder").to_owned();
        crate_modules.load_file(root, &dir, Vec::new());
        crate_modules
    }

    /// Reads one file module; `dir` holds the files of its child modules.
    fn load_file(&mut self, file: &Path, dir: &Path, path: ModulePath) {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let tokens = TokenStream::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not Rust tokens: {e}", file.display()));
        self.load_tokens(tokens, file, dir, path);
    }

    fn load_tokens(&mut self, tokens: TokenStream, file: &Path, dir: &Path, path: ModulePath) {
        self.modules.insert(path.clone());
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut own = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            if cfg_test(&tokens, i) {
                i = skip_item(&tokens, i + 2);
                continue;
            }
            match module_declaration(&tokens, i) {
                Some((name, body)) => {
                    let mut child = path.clone();
                    child.push(name.clone());
                    let child_dir = dir.join(&name);
                    match body {
                        Some(inline) => self.load_tokens(inline, file, &child_dir, child),
                        None => {
                            let flat = dir.join(format!("{name}.rs"));
                            let nested = child_dir.join("mod.rs");
                            let child_file = match path_attribute(&tokens, i) {
                                Some(written) => dir.join(written),
                                None if flat.exists() => flat,
                                None => nested,
                            };
                            self.load_file(&child_file, &child_dir, child);
                        }
                    }
                    // `mod`, the name, and the body or `;`.
                    i += 3;
                }
                None => {
                    own.push(tokens[i].clone());
                    i += 1;
                }
            }
        }
        self.sources
            .push((path, file.to_owned(), own.into_iter().collect()));
    }

    /// Every module a module's code refers to, with the path written.
    fn references(&self) -> Vec<Reference> {
        let mut references = Vec::new();
        for (module, file, tokens) in &self.sources {
            let mut written = Vec::new();
            collect_paths(tokens.clone(), &mut written);
            for path in written {
                if let Some(target) = self.resolve(module, &path) {
                    references.push(Reference {
                        from: module.clone(),
                        to: target,
                        file: file.clone(),
                        written: path.join("::"),
                    });
                }
            }
        }
        references
    }

    /// The module a path written in `module` names (the longest prefix of
    /// the path that is a module), if it is one of this crate's.
    fn resolve(&self, module: &[String], path: &[String]) -> Option<ModulePath> {
        let (mut base, rest): (ModulePath, &[String]) = match path.first()?.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (module.to_vec(), &path[1..]),
            "super" => {
                let mut base = module.to_vec();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                (base, rest)
            }
            // A child module is in scope by its name alone.
            first => {
                let mut child = module.to_vec();
                child.push(first.to_owned());
                if !self.modules.contains(&child) {
                    return None;
                }
                (module.to_vec(), path)
            }
        };
        for segment in rest {
            base.push(segment.clone());
            if !self.modules.contains(&base) {
                base.pop();
                break;
            }
        }
        Some(base)
    }

    /// Cycles among sibling modules, at every level of the tree. A module
    /// and its descendants count as one node at their parent's level, so a
    /// child referring to its parent (`super::`) is no cycle.
    fn cycles(&self) -> Vec<String> {
        // Per parent module: edges between its children, with one reference
        // that makes each edge.
        let mut levels: BTreeMap<ModulePath, BTreeMap<(String, String), Reference>> =
            BTreeMap::new();
        for reference in self.references() {
            let common = reference
                .from
                .iter()
                .zip(&reference.to)
                .take_while(|(a, b)| a == b)
                .count();
            // Same module, or one is an ancestor of the other.
            if common == reference.from.len() || common == reference.to.len() {
                continue;
            }
            let edge = (reference.from[common].clone(), reference.to[common].clone());
            levels
                .entry(reference.from[..common].to_vec())
                .or_default()
                .entry(edge)
                .or_insert(reference);
        }
        let mut found = Vec::new();
        for (parent, edges) in &levels {
            let graph: BTreeMap<&str, BTreeSet<&str>> =
                edges.keys().fold(BTreeMap::new(), |mut graph, (a, b)| {
                    graph.entry(a.as_str()).or_default().insert(b.as_str());
                    graph
                });
            for cycle in find_cycles(&graph) {
                let qualify = |name: &str| {
                    parent
                        .iter()
                        .map(String::as_str)
                        .chain([name])
                        .collect::<Vec<_>>()
                        .join("::")
                };
                let arrows = cycle
                    .iter()
                    .map(|m| qualify(m))
                    .collect::<Vec<_>>()
                    .join(" -> ");
                let because = cycle
                    .windows(2)
                    .map(|pair| {
                        let reference = &edges[&(pair[0].to_owned(), pair[1].to_owned())];
                        format!(
                            "    {} -> {}: `{}` in {}",
                            qualify(pair[0]),
                            qualify(pair[1]),
                            reference.written,
                            relative(&reference.file).display()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                found.push(format!("{arrows}\n{because}"));
            }
        }
        found
    }
}

/// A path written in one module that names another.
struct Reference {
    from: ModulePath,
    to: ModulePath,
    file: PathBuf,
    written: String,
}

/// Whether `tokens[i]` starts `#[cfg(test)]`. Test code is left out: a
/// test module may use its siblings' fixtures, and a fixture module its
/// siblings' items, without tying the modules themselves together.
fn cfg_test(tokens: &[TokenTree], i: usize) -> bool {
    match tokens.get(i..i + 2) {
        Some([TokenTree::Punct(hash), TokenTree::Group(attribute)]) => {
            hash.as_char() == '#'
                && attribute.delimiter() == Delimiter::Bracket
                && attribute.stream().to_string().replace(' ', "") == "cfg(test)"
        }
        _ => false,
    }
}

/// The index after the item starting at `tokens[i]` (after any further
/// attributes): after its `;` or its body in braces, whichever comes first.
fn skip_item(tokens: &[TokenTree], mut i: usize) -> usize {
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Punct(p) if p.as_char() == ';' => return i + 1,
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// `mod NAME;` or `mod NAME { ... }` at `tokens[i]`: the name, and the body
/// of an inline module.
/// The file a `#[path = "..."]` attribute right before the `mod` at `i`
/// names (relative to the declaring file's folder).
fn path_attribute(tokens: &[TokenTree], i: usize) -> Option<String> {
    let [TokenTree::Punct(hash), TokenTree::Group(attribute)] = tokens.get(i.checked_sub(2)?..i)?
    else {
        return None;
    };
    if hash.as_char() != '#' || attribute.delimiter() != Delimiter::Bracket {
        return None;
    }
    let inner: Vec<TokenTree> = attribute.stream().into_iter().collect();
    let [
        TokenTree::Ident(key),
        TokenTree::Punct(eq),
        TokenTree::Literal(value),
    ] = &inner[..]
    else {
        return None;
    };
    if key != "path" || eq.as_char() != '=' {
        return None;
    }
    let value = value.to_string();
    Some(value.strip_prefix('"')?.strip_suffix('"')?.to_owned())
}

fn module_declaration(tokens: &[TokenTree], i: usize) -> Option<(String, Option<TokenStream>)> {
    let [TokenTree::Ident(keyword), TokenTree::Ident(name), end] = tokens.get(i..i + 3)? else {
        return None;
    };
    if keyword != "mod" {
        return None;
    }
    match end {
        TokenTree::Punct(p) if p.as_char() == ';' => Some((name.to_string(), None)),
        TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
            Some((name.to_string(), Some(g.stream())))
        }
        _ => None,
    }
}

/// Every path of two or more segments written in the tokens (in code, in
/// attributes and in macro input alike), with `use` trees such as
/// `crate::{a, b::{self, c}}` expanded into one path per leaf.
fn collect_paths(tokens: TokenStream, out: &mut Vec<Vec<String>>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(group) => {
                collect_paths(group.stream(), out);
                i += 1;
            }
            // A path starts at an identifier followed by `::` that does not
            // itself follow `::` (the middle of a path seen from its start).
            TokenTree::Ident(_)
                if path_separator(&tokens, i + 1) && !follows_separator(&tokens, i) =>
            {
                i = path_tree(&tokens, i, &[], out);
            }
            _ => i += 1,
        }
    }
}

/// Reads the path (or use tree) starting at `tokens[i]`, pushes every full
/// path it spells after `prefix`, and returns the index after it.
fn path_tree(
    tokens: &[TokenTree],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(i) {
            Some(TokenTree::Ident(ident)) => {
                let ident = ident.to_string();
                // `{self, ..}` in a use tree names the prefix itself.
                if !(ident == "self" && !path.is_empty() && !path_separator(tokens, i + 1)) {
                    path.push(ident);
                }
                i += 1;
            }
            Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                let mut j = 0;
                while j < inner.len() {
                    j = path_tree(&inner, j, &path, out);
                    // Skip to after the next top-level comma.
                    while j < inner.len() {
                        let comma = matches!(&inner[j], TokenTree::Punct(p) if p.as_char() == ',');
                        j += 1;
                        if comma {
                            break;
                        }
                    }
                }
                return i + 1;
            }
            // `*`, `<`, or anything else ends the path.
            _ => break,
        }
        if path_separator(tokens, i) {
            i += 2;
        } else {
            break;
        }
    }
    if path.len() > prefix.len() || !prefix.is_empty() {
        out.push(path);
    }
    i
}

/// Whether `tokens[i..]` starts with `::`.
fn path_separator(tokens: &[TokenTree], i: usize) -> bool {
    matches!(
        tokens.get(i..i + 2),
        Some([TokenTree::Punct(a), TokenTree::Punct(b)])
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
    )
}

/// Whether `tokens[i]` comes right after `::`.
fn follows_separator(tokens: &[TokenTree], i: usize) -> bool {
    i >= 2 && path_separator(tokens, i - 2)
}

/// One cycle per strongly connected component of more than one node, as the
/// path `a -> b -> a` that starts and ends at the component's first node.
fn find_cycles<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(*from).chain(to.iter().copied()))
        .collect();
    let successors = |node: &str| graph.get(node).into_iter().flatten().copied();
    // Two nodes share a component when each reaches the other.
    let reach = |start: &'a str| {
        let mut seen = BTreeSet::from([start]);
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for next in successors(node) {
                if seen.insert(next) {
                    queue.push_back(next);
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&str, BTreeSet<&str>> =
        nodes.iter().map(|node| (*node, reach(node))).collect();
    let mut assigned = BTreeSet::new();
    let mut cycles = Vec::new();
    for start in &nodes {
        if assigned.contains(start) {
            continue;
        }
        let component: BTreeSet<&str> = reached[start]
            .iter()
            .copied()
            .filter(|other| reached[other].contains(start))
            .collect();
        assigned.extend(component.iter().copied());
        if component.len() < 2 {
            continue;
        }
        // The shortest way around: breadth first from start back to it,
        // within the component.
        let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([*start]);
        'search: while let Some(node) = queue.pop_front() {
            for next in successors(node) {
                if !component.contains(next) {
                    continue;
                }
                if next == *start {
                    let mut cycle = vec![*start, node];
                    let mut at = node;
                    while at != *start {
                        at = previous[at];
                        cycle.push(at);
                    }
                    cycle.reverse();
                    cycles.push(cycle);
                    break 'search;
                }
                if !previous.contains_key(next) {
                    previous.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
    }
    cycles
}

#[test]
fn cycle_finder_finds_a_cycle_and_only_cycles() {
    let graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::from([
        ("a", BTreeSet::from(["b"])),
        ("b", BTreeSet::from(["c", "d"])),
        ("c", BTreeSet::from(["a"])),
        ("d", BTreeSet::from(["e"])),
        ("x", BTreeSet::from(["y"])),
        ("y", BTreeSet::from(["x"])),
    ]);
    assert_eq!(
        find_cycles(&graph),
        [vec!["a", "b", "c", "a"], vec!["x", "y", "x"]]
    );
    let acyclic: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::from([
        ("a", BTreeSet::from(["b", "c"])),
        ("b", BTreeSet::from(["c"])),
    ]);
    assert!(find_cycles(&acyclic).is_empty());
}

#[test]
fn use_trees_expand_to_one_path_per_leaf() {
    let tokens = TokenStream::from_str(
        "use crate::{\n    a,\n    b::{self, c as d},\n    e::*,\n};\nfn f() { super::g::h(); x.y(); }",
    )
    .unwrap();
    let mut paths = Vec::new();
    collect_paths(tokens, &mut paths);
    let paths: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "crate::a",
            "crate::b",
            "crate::b::c",
            "crate::e",
            "super::g::h"
        ]
    );
}

#[test]
fn finds_a_cycle_in_a_synthetic_crate() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let files = [
        (
            "lib.rs",
            "mod a;\nmod b;\nmod c;\nmod e;\nmod f;\npub use a::Thing;\n",
        ),
        // a -> b through a multi-line use tree.
        (
            "a.rs",
            "use crate::{\n    b::{\n        self,\n        Other,\n    },\n};\npub struct Thing;\n",
        ),
        // b -> a through super::, in a macro's input.
        (
            "b.rs",
            "pub struct Other;\nfn f() { drop(vec![super::a::Thing]); }\n",
        ),
        // c -> a only, and c's child refers to its parent: no cycle.
        (
            "c.rs",
            "mod d;\nuse self::d::X;\nfn f() { crate::a::Thing; }\n",
        ),
        (
            "c/d.rs",
            "pub struct X;\nuse super::super::c;\nfn g() { format!(\"{}\", super::f()); }\n",
        ),
        // e -> f, and f -> e only in test code: no cycle.
        ("e.rs", "use crate::f::Y;\n"),
        (
            "f.rs",
            "pub struct Y;\n#[cfg(test)]\nuse crate::e;\n#[cfg(test)]\n#[allow(unused)]\nmod tests {\n    \
             fn f() { crate::e::g(); }\n}\n",
        ),
    ];
    for (file, text) in files {
        let path = src.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    let crate_modules = CrateModules::load(&src.join("lib.rs"));
    let modules: Vec<String> = crate_modules.modules.iter().map(|m| m.join("::")).collect();
    assert_eq!(modules, ["", "a", "b", "c", "c::d", "e", "f"]);
    let cycles = crate_modules.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:#?}");
    assert!(cycles[0].starts_with("a -> b -> a\n"), "{}", cycles[0]);
    assert!(cycles[0].contains("`super::a::Thing`"), "{}", cycles[0]);
}
