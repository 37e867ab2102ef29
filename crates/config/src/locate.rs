//! Mapping between byte spans in the document and dotted key paths, using the spanned
//! tree (`toml::de::DeTable`) the TOML parser produces.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The 1-based line and 1-based column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The dotted path of the key whose key or value text contains byte `pos`: the most
/// deeply nested one when several do (an inline table and a key inside it).
pub(crate) fn path_at(root: &DeTable<'_>, pos: usize) -> Option<String> {
    let mut best: Option<Vec<String>> = None;
    let mut prefix = Vec::new();
    walk_table(root, pos, &mut prefix, &mut best);
    best.map(|p| p.join("."))
}

fn contains(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && pos < span.end.max(span.start + 1)
}

fn walk_table(
    table: &DeTable<'_>,
    pos: usize,
    prefix: &mut Vec<String>,
    best: &mut Option<Vec<String>>,
) {
    for (key, value) in table.iter() {
        prefix.push(key.get_ref().to_string());
        let hit = contains(&key.span(), pos) || contains(&value.span(), pos);
        if hit && best.as_ref().is_none_or(|b| b.len() < prefix.len()) {
            *best = Some(prefix.clone());
        }
        walk_value(value, pos, prefix, best);
        prefix.pop();
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    pos: usize,
    prefix: &mut Vec<String>,
    best: &mut Option<Vec<String>>,
) {
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, pos, prefix, best),
        // Arrays of tables: the element's index goes on the array's key (`imap[1].port`).
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let DeValue::Table(table) = item.get_ref() {
                    let key = prefix.pop().unwrap_or_default();
                    prefix.push(format!("{key}[{i}]"));
                    if contains(&item.span(), pos)
                        && best.as_ref().is_none_or(|b| b.len() <= prefix.len())
                    {
                        *best = Some(prefix.clone());
                    }
                    walk_table(table, pos, prefix, best);
                    prefix.pop();
                    prefix.push(key);
                }
            }
        }
        _ => {}
    }
}

/// A best guess at the key path of the line holding byte `pos`, from the text alone, for
/// syntax errors the parser could not attach to a key: the bare or dotted key before `=`
/// on that line, under the nearest `[table]` header above it.
pub(crate) fn guess_path_from_text(text: &str, pos: usize) -> Option<String> {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let (lhs, _) = line.split_once('=')?;
    let key = simple_key(lhs)?;
    let header = text[..line_start].lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?;
        let inner = inner.strip_prefix('[').unwrap_or(inner);
        let (inner, _) = inner.split_once(']')?;
        simple_key(inner)
    });
    Some(match header {
        Some(header) => format!("{header}.{key}"),
        None => key,
    })
}

/// `a . b` as `a.b`, if every segment is a bare key.
fn simple_key(text: &str) -> Option<String> {
    let segments: Vec<&str> = text.split('.').map(str::trim).collect();
    let bare = |s: &&str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    segments.iter().all(bare).then(|| segments.join("."))
}

/// The spanned value at dotted `path` (given as segments), if the document has it. A segment
/// `name[i]` is element `i` of array `name`.
pub(crate) fn value_at<'a, 'i>(
    root: &'a DeTable<'i>,
    path: &[&str],
) -> Option<&'a Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let (first, index) = match first.strip_suffix(']').and_then(|f| f.split_once('[')) {
        Some((name, i)) => (name, Some(i.parse::<usize>().ok()?)),
        None => (*first, None),
    };
    let value = root
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == first)
        .map(|(_, v)| v)?;
    let value = match (index, value.get_ref()) {
        (None, _) => value,
        (Some(i), DeValue::Array(items)) => items.get(i)?,
        (Some(_), _) => return None,
    };
    if rest.is_empty() {
        return Some(value);
    }
    match value.get_ref() {
        DeValue::Table(table) => value_at(table, rest),
        _ => None,
    }
}

/// The span of the key at `path` itself (the text of its last segment).
pub(crate) fn key_span_at(root: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (last, parents) = path.split_last()?;
    let table = if parents.is_empty() {
        root
    } else {
        match value_at(root, parents)?.get_ref() {
            DeValue::Table(table) => table,
            _ => return None,
        }
    };
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == *last)
        .map(|(k, _)| k.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "2" comes after "bé = " (5 characters, 6 bytes).
        assert_eq!(line_column(text, 12), (2, 6));
        assert_eq!(line_column(text, text.len()), (3, 1));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn path_at_finds_keys_under_headers_dotted_keys_and_inline_tables() {
        let text = "top = 1\n[a]\nb = 2\nc.d = 3\ne = { f = 4 }\n";
        let table = DeTable::parse(text).unwrap();
        let at = |needle: &str| path_at(table.get_ref(), text.find(needle).unwrap());
        assert_eq!(at("top").as_deref(), Some("top"));
        assert_eq!(at("b = 2").as_deref(), Some("a.b"));
        assert_eq!(at("2").as_deref(), Some("a.b"));
        assert_eq!(at("d = 3").as_deref(), Some("a.c.d"));
        assert_eq!(at("3").as_deref(), Some("a.c.d"));
        assert_eq!(at("4").as_deref(), Some("a.e.f"));
        assert_eq!(at("{").as_deref(), Some("a.e"));
        assert_eq!(at("[a]").as_deref(), Some("a"));
        assert_eq!(at("a]").as_deref(), Some("a"));
    }

    #[test]
    fn key_guessed_from_text() {
        let text = "[a]\nb = 1\n[c . d]\ne.f = \"x\nno key here\n";
        let at = |needle: &str| guess_path_from_text(text, text.find(needle).unwrap());
        assert_eq!(at("b =").as_deref(), Some("a.b"));
        assert_eq!(at("f =").as_deref(), Some("c.d.e.f"));
        assert_eq!(at("no key").as_deref(), None);
        assert_eq!(at("[c").as_deref(), None);
        assert_eq!(guess_path_from_text("x = \"", 4).as_deref(), Some("x"));
    }

    #[test]
    fn value_and_key_lookup_by_path() {
        let text = "[a]\nb = 22\n";
        let table = DeTable::parse(text).unwrap();
        let value = value_at(table.get_ref(), &["a", "b"]).unwrap();
        assert_eq!(&text[value.span()], "22");
        let key = key_span_at(table.get_ref(), &["a", "b"]).unwrap();
        assert_eq!(&text[key], "b");
        assert!(value_at(table.get_ref(), &["a", "x"]).is_none());
        assert!(value_at(table.get_ref(), &["a", "b", "c"]).is_none());
    }
}
