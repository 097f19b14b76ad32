//! The lean path's answer parser, fuzzed: any bytes as an upstream's answer. lb and the
//! client must agree on where the answer ends, or the next answer on the client's
//! connection is one the attacker wrote (response splitting). So for every answer lb
//! relays: the head it writes parses whole, carries no framing lb did not follow, and
//! a strict RFC 9112 reader of that head finds the body's end where lb found it —
//! whatever way the bytes were split on arrival. lb refusing an answer (a 502) is
//! always allowed.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((&flags, bytes)) = bytes.split_first() else {
        return;
    };
    let head_method = flags & 1 == 1;
    let split = usize::from(flags >> 1);
    let Ok(Some(r)) = lb::proxy::lean::relay_for_fuzzing(bytes, head_method, split) else {
        return;
    };
    if r.interim {
        return;
    }
    let client = Client::read(&r.head, r.status, head_method);
    assert_eq!(
        client.framing,
        r.framing,
        "the client reads the body differently: {:?}",
        String::from_utf8_lossy(&r.head)
    );
    if r.framing == "close" {
        assert!(
            client.closes,
            "a body that ends at close must close the client"
        );
    }
    let Ok(lb_end) = r.body else { return };
    let rest = &bytes[r.head_len..];
    let strict = match r.framing {
        "empty" => Ok(Some(0)),
        "length" => Ok((rest.len() as u64 >= client.length).then_some(client.length as usize)),
        "chunked" => chunked_end(rest),
        _ => Ok(None),
    };
    // lb may wait for bytes a strict reader would refuse (the client then fails on
    // them), but where either sees the end, both must see it at the same byte.
    let agree = match (strict, lb_end) {
        (Ok(s), l) => s == l,
        (Err(()), l) => l.is_none(),
    };
    assert!(
        agree,
        "a strict reader ends the body at {strict:?}, lb at {lb_end:?}"
    );
});

/// What a client makes of the head lb wrote (RFC 9112 §6.3, written apart from lb's).
struct Client {
    framing: &'static str,
    length: u64,
    closes: bool,
}

impl Client {
    fn read(head: &[u8], status: u16, head_method: bool) -> Self {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.len(), "bytes after the head"),
            other => panic!("lb wrote a head that does not parse: {other:?}"),
        }
        assert_eq!(resp.code, Some(status));
        let (mut lengths, mut codings, mut closes) = (Vec::new(), Vec::new(), false);
        for h in resp.headers.iter() {
            let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            match h.name.to_ascii_lowercase().as_str() {
                "content-length" => lengths.push(value),
                // Empty list elements do not count (RFC 9110 §5.6.1).
                "transfer-encoding" => codings.extend(
                    value
                        .split(',')
                        .map(ows)
                        .filter(|c| !c.is_empty())
                        .map(String::from),
                ),
                "connection" => closes |= value.split(',').any(|t| ows(t) == "close"),
                n => assert!(
                    !matches!(
                        n,
                        "keep-alive" | "upgrade" | "proxy-connection" | "te" | "trailer"
                    ),
                    "hop-by-hop field {n} relayed"
                ),
            }
        }
        assert!(lengths.len() <= 1, "Content-Length repeated: {lengths:?}");
        assert!(
            lengths.is_empty() || codings.is_empty(),
            "both Content-Length and Transfer-Encoding"
        );
        let framing = if head_method || status == 204 || status == 304 {
            "empty"
        } else if !codings.is_empty() {
            if codings.last().is_some_and(|c| c == "chunked") {
                "chunked"
            } else {
                "close"
            }
        } else if lengths.is_empty() {
            "close"
        } else {
            "length"
        };
        let length = match (framing, lengths.first()) {
            ("length", Some(v)) => v
                .parse()
                .unwrap_or_else(|_| panic!("Content-Length {v:?} relayed")),
            _ => 0,
        };
        Client {
            framing,
            length,
            closes,
        }
    }
}

/// A list element without its optional white space: SP and HTAB only (RFC 9110 §5.6.3;
/// `str::trim` would take U+0085 too).
fn ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Where a chunked body ends, read strictly: chunk sizes in hex, optional blanks and
/// extensions, every line ended by CRLF, trailer fields, the final CRLF. Ok(None): it
/// ends past these bytes.
fn chunked_end(b: &[u8]) -> Result<Option<usize>, ()> {
    let line = |at: usize| -> Result<Option<(&[u8], usize)>, ()> {
        let Some(i) = b[at..].windows(2).position(|w| w == b"\r\n") else {
            return if b[at..].iter().any(|&c| c == b'\n') {
                Err(())
            } else {
                Ok(None)
            };
        };
        let l = &b[at..at + i];
        if l.iter().any(|&c| c == b'\n' || c == b'\r') {
            return Err(());
        }
        Ok(Some((l, at + i + 2)))
    };
    let mut at = 0;
    loop {
        let Some((l, next)) = line(at)? else {
            return Ok(None);
        };
        let digits = l.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 {
            return Err(());
        }
        let after = &l[digits..];
        let blanks = after
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t'))
            .count();
        if !(after[blanks..].is_empty() || after[blanks] == b';') {
            return Err(());
        }
        // Leading zeros are allowed (1*HEXDIG), a size past 64 bits is not.
        let size = l[..digits].iter().try_fold(0u64, |n, &c| {
            let d = u64::from((c as char).to_digit(16).expect("a hex digit"));
            n.checked_mul(16).and_then(|n| n.checked_add(d)).ok_or(())
        })?;
        at = next;
        if size == 0 {
            break;
        }
        let Some(end) = usize::try_from(size).ok().and_then(|s| at.checked_add(s)) else {
            return Ok(None);
        };
        match b.get(end..end + 2) {
            None if b.get(end).is_some_and(|&c| c != b'\r') => return Err(()),
            None => return Ok(None),
            Some(b"\r\n") => at = end + 2,
            Some(_) => return Err(()),
        }
    }
    // Trailer fields, then the empty line.
    loop {
        let Some((l, next)) = line(at)? else {
            return Ok(None);
        };
        at = next;
        if l.is_empty() {
            return Ok(Some(at));
        }
        if !l.contains(&b':') {
            return Err(());
        }
    }
}
