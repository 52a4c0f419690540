//! Read access to a request's header fields, the same for both request paths: pingora's parsed
//! header (`http::HeaderMap`, general path) and the fields the HTTP/1.1 front door parsed in
//! place (`HeaderFields`, direct path). Identity, client address, traits and assignment rules
//! read headers only through [`HeaderLookup`], so both paths decide alike.
//!
//! Invariant: names are matched ASCII case-insensitively against the lowercase name asked for;
//! values come back as the bytes that arrived, in arrival order.

use http::HeaderMap;

/// Header fields by name.
pub trait HeaderLookup {
    /// The values of every field named `name` (lowercase), in the order they arrived.
    fn get_all<'s>(&'s self, name: &'s str) -> impl DoubleEndedIterator<Item = &'s [u8]> + 's;

    /// The value of the first field named `name` (lowercase).
    fn get<'s>(&'s self, name: &'s str) -> Option<&'s [u8]> {
        self.get_all(name).next()
    }

    /// The size of the fields as sent: name, value, `": "` and CRLF of each.
    fn wire_len(&self) -> usize;
}

impl HeaderLookup for HeaderMap {
    fn get_all<'s>(&'s self, name: &'s str) -> impl DoubleEndedIterator<Item = &'s [u8]> + 's {
        HeaderMap::get_all(self, name)
            .into_iter()
            .map(|value| value.as_bytes())
    }

    fn wire_len(&self) -> usize {
        self.iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum()
    }
}

/// Fields parsed in place from a request head (the front door's buffer).
#[derive(Clone, Copy, Debug)]
pub struct HeaderFields<'a> {
    fields: &'a [httparse::Header<'a>],
}

impl<'a> HeaderFields<'a> {
    pub fn new(fields: &'a [httparse::Header<'a>]) -> Self {
        HeaderFields { fields }
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a httparse::Header<'a>> + 'a {
        self.fields.iter()
    }
}

impl HeaderLookup for HeaderFields<'_> {
    fn get_all<'s>(&'s self, name: &'s str) -> impl DoubleEndedIterator<Item = &'s [u8]> + 's {
        self.fields
            .iter()
            .filter(move |field| field.name.eq_ignore_ascii_case(name))
            .map(|field| field.value)
    }

    fn wire_len(&self) -> usize {
        self.fields
            .iter()
            .map(|field| field.name.len() + field.value.len() + 4)
            .sum()
    }
}

/// A header value as text, when it is visible ASCII (with spaces and tabs), as `HeaderValue::to_str`
/// would accept it.
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn both_forms_answer_alike() {
        let mut map = HeaderMap::new();
        map.append("x-user-id", HeaderValue::from_static("alice"));
        map.append("cookie", HeaderValue::from_static("a=1"));
        map.append("cookie", HeaderValue::from_static("b=2"));
        let parsed = [
            httparse::Header {
                name: "X-User-Id",
                value: b"alice",
            },
            httparse::Header {
                name: "Cookie",
                value: b"a=1",
            },
            httparse::Header {
                name: "cookie",
                value: b"b=2",
            },
        ];
        let fields = HeaderFields::new(&parsed);
        for name in ["x-user-id", "cookie", "absent"] {
            let a: Vec<&[u8]> = HeaderLookup::get_all(&map, name).collect();
            let b: Vec<&[u8]> = fields.get_all(name).collect();
            assert_eq!(a, b, "{name}");
            let a: Vec<&[u8]> = HeaderLookup::get_all(&map, name).rev().collect();
            let b: Vec<&[u8]> = fields.get_all(name).rev().collect();
            assert_eq!(a, b, "{name} reversed");
        }
        assert_eq!(fields.get("cookie"), Some(&b"a=1"[..]));
        assert_eq!(map.wire_len(), fields.wire_len());
    }

    #[test]
    fn visible_ascii_is_what_header_value_to_str_accepts() {
        for bytes in [&b"plain text"[..], b"tab\there", b"caf\xc3\xa9", b""] {
            let value = HeaderValue::from_bytes(bytes).unwrap();
            assert_eq!(visible_ascii(bytes), value.to_str().ok(), "{bytes:?}");
        }
    }
}
