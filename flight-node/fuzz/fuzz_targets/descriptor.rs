//! `DatasetId::from_path` and `DatasetId::new` on arbitrary strings.
//!
//! Input: path elements separated by NUL bytes (each read as UTF-8, lossily). Properties:
//! never panics; a path is accepted exactly when it has one or two elements that are all
//! DNS-1123 labels; accepted names are the elements as given (namespace `default` for one
//! element) and safe to join into object-store paths; every refusal is INVALID_ARGUMENT.
#![no_main]

use flight_node::name::{validate_label, DatasetId, DEFAULT_NAMESPACE};
use flight_node_fuzz::labels::{is_dns1123_label, path_safe};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path: Vec<String> = data
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();

    for p in &path {
        assert_eq!(
            validate_label("name", p).is_ok(),
            is_dns1123_label(p),
            "{p:?}"
        );
    }

    let expected = match path.as_slice() {
        [name] => Some((DEFAULT_NAMESPACE, name.as_str())),
        [ns, name] => Some((ns.as_str(), name.as_str())),
        _ => None,
    }
    .filter(|(ns, name)| is_dns1123_label(ns) && is_dns1123_label(name));
    match (DatasetId::from_path(&path), expected) {
        (Ok(id), Some((ns, name))) => {
            assert_eq!((id.namespace(), id.name()), (ns, name));
            assert!(path_safe(id.namespace()) && path_safe(id.name()), "{id}");
            assert_eq!(id.to_string(), format!("{ns}/{name}"));
        }
        (Err(e), None) => assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}"),
        (got, want) => panic!("path {path:?}: got {got:?}, expected {want:?}"),
    }

    // The two-argument constructor (actions' JSON bodies) on the first two elements.
    if let [ns, name, ..] = path.as_slice() {
        let ok = is_dns1123_label(ns) && is_dns1123_label(name);
        match DatasetId::new(ns.as_str(), name.as_str()) {
            Ok(id) => assert!(ok && id.namespace() == ns && id.name() == name, "{id}"),
            Err(e) => {
                assert!(!ok, "{ns:?}/{name:?} refused: {e}");
                assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            }
        }
    }
});
