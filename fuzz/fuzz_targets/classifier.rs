//! The split-port classifier on arbitrary SQL text, with both values of
//! `standard_conforming_strings`, cached and uncached. Nothing may panic
//! or overflow the stack, and the cached answer must equal the uncached one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgvane::classifier::{Classifier, classify_uncached};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let c = Classifier::new(vec!["my_ro".into()]);
    for scs in [true, false] {
        let direct = classify_uncached(sql, scs, &["my_ro".into()]);
        let (cached, _) = c.classify(sql, scs);
        let (again, _) = c.classify(sql, scs);
        assert_eq!(format!("{direct:?}"), format!("{cached:?}"));
        assert_eq!(format!("{cached:?}"), format!("{again:?}"));
    }
});
