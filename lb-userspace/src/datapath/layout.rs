//! The object's maps and programs against the contract in lb-common
//! ([`lb_common::layout`]): the built object must declare exactly the maps the
//! contract lists, with the same type, sizes, capacity and flags, and a pinned map is
//! adopted only if it matches too. The program list comes from the object itself.

use std::path::Path;

use aya::maps::MapInfo;
use aya_obj::{EbpfSectionKind, ProgramSection};
use lb_common::layout::{self, MapSpec};

use super::DatapathError;

/// A program of the object and how it attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramDef {
    pub name: String,
    pub hook: Hook,
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `cgroup/connect4`, `cgroup/getpeername4`, ...: to the cgroup.
    CgroupSockAddr,
    /// `sockops`: to the cgroup.
    SockOps,
    /// `sk_msg`: to the socket map.
    SkMsg,
    /// `xdp`: to each `--xdp-iface` interface, on its way in.
    Xdp,
    /// `classifier`: to each `--xdp-iface` interface, on its way out (TCX egress).
    TcEgress,
}

/// What the object declares.
#[derive(Clone, Debug)]
pub struct ObjectLayout {
    /// Pinned maps (the data sections are not among them).
    pub maps: Vec<MapSpec>,
    /// Programs, by name.
    pub programs: Vec<ProgramDef>,
}

/// Reads the maps and programs of an eBPF object.
pub fn of_object(bytes: &[u8]) -> Result<ObjectLayout, DatapathError> {
    let obj = aya_obj::Object::parse(bytes).map_err(|e| DatapathError::Load(Box::new(e)))?;
    let pinned = |m: &aya_obj::Map| {
        matches!(
            m.section_kind(),
            EbpfSectionKind::BtfMaps | EbpfSectionKind::Maps
        )
    };
    let mut maps = Vec::new();
    let mut unknown = Vec::new();
    for (name, m) in obj.maps.iter().filter(|(_, m)| pinned(m)) {
        // The contract's own name: a `&'static str` for the map specs.
        let Some(spec) = layout::map(name) else {
            unknown.push(name.clone());
            continue;
        };
        maps.push(MapSpec {
            name: spec.name,
            kind: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
        });
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(DatapathError::Load(
            format!("maps {unknown:?} are not in lb_common::layout::MAPS").into(),
        ));
    }
    maps.sort_by_key(|m| m.name);
    let mut programs: Vec<ProgramDef> = obj
        .programs
        .iter()
        .map(|(name, p)| {
            let hook = match p.section {
                ProgramSection::CgroupSockAddr { .. } => Hook::CgroupSockAddr,
                ProgramSection::SockOps => Hook::SockOps,
                ProgramSection::SkMsg => Hook::SkMsg,
                ProgramSection::Xdp { .. } => Hook::Xdp,
                ProgramSection::SchedClassifier => Hook::TcEgress,
                ref other => {
                    return Err(DatapathError::Load(
                        format!("program {name}: lb does not attach {other:?} programs").into(),
                    ));
                }
            };
            Ok(ProgramDef {
                name: name.clone(),
                hook,
            })
        })
        .collect::<Result<_, _>>()?;
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ObjectLayout { maps, programs })
}

/// The object declares exactly the contract's maps, each as the contract says.
pub fn check_object(object: &ObjectLayout) -> Result<(), String> {
    let mut problems = Vec::new();
    for want in &layout::MAPS {
        match object.maps.iter().find(|m| m.name == want.name) {
            None => problems.push(format!("{}: not in the object", want.name)),
            Some(got) if got != want => problems.push(format!(
                "{}: the object has {}, lb-common says {}",
                want.name,
                describe(got),
                describe(want)
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Checks a pinned map against the contract before it is adopted.
pub fn check_pinned(path: &Path, spec: &MapSpec) -> Result<(), DatapathError> {
    let info = MapInfo::from_pin(path).map_err(|e| DatapathError::OpenMap {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    let found = MapSpec {
        name: spec.name,
        // MapInfo's type is an enum; the raw value is what the contract holds.
        kind: raw_kind(&info).unwrap_or(u32::MAX),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    };
    if found == *spec {
        return Ok(());
    }
    Err(DatapathError::Layout {
        path: path.to_path_buf(),
        found: describe(&found),
        expected: describe(spec),
    })
}

fn raw_kind(info: &MapInfo) -> Option<u32> {
    use aya::maps::MapType;
    Some(match info.map_type().ok()? {
        MapType::Hash => layout::kind::HASH,
        MapType::Array => layout::kind::ARRAY,
        MapType::PerCpuHash => layout::kind::PERCPU_HASH,
        MapType::PerCpuArray => layout::kind::PERCPU_ARRAY,
        MapType::LruHash => layout::kind::LRU_HASH,
        MapType::SockHash => layout::kind::SOCKHASH,
        MapType::SockMap => layout::kind::SOCKMAP,
        _ => return None,
    })
}

fn describe(m: &MapSpec) -> String {
    format!(
        "type {} key {} B value {} B max_entries {} flags {:#x}",
        m.kind, m.key_size, m.value_size, m.max_entries, m.flags
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract machine-checked: the embedded object's maps are lb-common's, and
    /// its programs are the six lb attaches.
    #[test]
    fn elf_contract_the_embedded_object_matches_lb_common() {
        let obj = of_object(super::super::object::embedded()).expect("the embedded object parses");
        if let Err(e) = check_object(&obj) {
            panic!("the eBPF object and lb_common::layout disagree:\n{e}");
        }
        assert_eq!(obj.maps.len(), layout::MAPS.len());
        let programs: Vec<(&str, Hook)> = obj
            .programs
            .iter()
            .map(|p| (p.name.as_str(), p.hook))
            .collect();
        assert_eq!(
            programs,
            [
                ("lb_connect4", Hook::CgroupSockAddr),
                ("lb_getpeername4", Hook::CgroupSockAddr),
                ("lb_sk_msg", Hook::SkMsg),
                ("lb_sockops", Hook::SockOps),
                ("lb_tc_egress", Hook::TcEgress),
                ("lb_xdp", Hook::Xdp),
            ]
        );
    }

    #[test]
    fn a_map_that_differs_from_the_contract_is_named_with_both_shapes() {
        let mut obj = of_object(super::super::object::embedded()).expect("parses");
        let services = obj
            .maps
            .iter_mut()
            .find(|m| m.name == lb_common::map_names::SERVICES)
            .expect("LB_SERVICES");
        services.value_size += 4;
        let e = check_object(&obj).unwrap_err();
        assert!(
            e.starts_with("LB_SERVICES: the object has type 1 key 8 B value 20 B"),
            "{e}"
        );
        obj.maps.retain(|m| m.name != lb_common::map_names::SLOTS);
        assert!(
            check_object(&obj)
                .unwrap_err()
                .contains("LB_SLOTS: not in the object")
        );
    }
}
