//! A Prometheus text-format (0.0.4) reader built for one job: pull a handful of series out of a
//! ~50 KB page every 100 ms without allocating and without trusting the page.
//!
//! * Zero-copy: names, label sets and samples borrow the page.
//! * A line whose first token (up to `{`, a blank or the line's end) is not a wanted name costs
//!   two byte scans, sixteen bytes a step: to the end of that token, and on to the newline. Its
//!   name is not validated, its labels and value are never looked at.
//! * Label sets of wanted lines are validated once, then kept as the raw text between the braces:
//!   [`Labels`] unescapes a value only when asked for it.
//! * Nothing on the page is fatal: a line that does not parse is counted in
//!   [`ParseStats::garbage`] and skipped. No input panics or indexes out of bounds.
//!
//! Accepted: `#` comments (HELP/TYPE included), blank lines, CRLF, a last line without `\n`,
//! leading blanks, names with colons, `{}`, a trailing comma in a label set, blanks around label
//! tokens, escapes `\"` `\\` `\n` in label values (any other escaped byte is kept verbatim, as
//! Prometheus does), values in Rust/Go float syntax plus `NaN`/`+Inf`/`-Inf`, an optional
//! timestamp, and an OpenMetrics exemplar (`# {...} v`) after them, which is ignored.
//! Not accepted (garbage): quoted UTF-8 metric or label names (`{"a.b"="x"}`), invalid UTF-8 in
//! a line's name or in a wanted line's labels or value.

use std::borrow::Cow;

/// What one pass over a page saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Lines on the page, comments and blank lines included.
    pub lines: usize,
    /// Sample lines handed to the caller.
    pub samples: usize,
    /// Lines whose name was not wanted: not parsed, not validated.
    pub skipped: usize,
    /// Lines dropped as unparsable: neither comment, blank nor `token{…` / `token value`, or a
    /// wanted line whose name, labels, value or timestamp do not parse.
    pub garbage: usize,
    /// 1-based number of the first garbage line, for a log message.
    pub first_garbage_line: Option<usize>,
}

/// One sample line, borrowing the page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'p> {
    pub name: &'p str,
    pub labels: Labels<'p>,
    pub value: f64,
    /// As written: milliseconds in the Prometheus text format (seconds in OpenMetrics).
    pub timestamp: Option<f64>,
}

/// A validated label set: the text between `{` and `}`, unescaped lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Labels<'p> {
    raw: &'p str,
}

impl<'p> Labels<'p> {
    /// The value of label `name` (the first one, should the page repeat it), unescaped.
    /// Borrowed from the page unless it contained escapes.
    pub fn get(&self, name: &str) -> Option<Cow<'p, str>> {
        self.raw_pairs()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| unescape(v))
    }

    /// `(name, value)` pairs in page order, values unescaped.
    pub fn iter(&self) -> impl Iterator<Item = (&'p str, Cow<'p, str>)> + 'p {
        self.raw_pairs().map(|(n, v)| (n, unescape(v)))
    }

    pub fn is_empty(&self) -> bool {
        self.raw_pairs().next().is_none()
    }

    /// The label set as written, without the braces.
    pub fn as_raw(&self) -> &'p str {
        self.raw
    }

    /// Pairs with values still escaped. `raw` was validated by `scan_label_set`; should it not
    /// parse anyway, iteration just stops.
    fn raw_pairs(&self) -> RawPairs<'p> {
        RawPairs {
            s: self.raw,
            pos: 0,
        }
    }
}

struct RawPairs<'p> {
    s: &'p str,
    pos: usize,
}

impl<'p> Iterator for RawPairs<'p> {
    type Item = (&'p str, &'p str);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.s.as_bytes();
        let p = skip_blanks(b, self.pos);
        let pair = parse_pair(b, p)?;
        let mut after = skip_blanks(b, pair.end);
        if b.get(after) == Some(&b',') {
            after += 1;
        }
        self.pos = after;
        // Ranges come from scanning `b` itself and end on ASCII bytes, so these are char
        // boundaries; `get` keeps that a checked claim.
        Some((
            self.s.get(pair.name.0..pair.name.1)?,
            self.s.get(pair.value.0..pair.value.1)?,
        ))
    }
}

struct Pair {
    name: (usize, usize),
    /// Between the quotes, still escaped.
    value: (usize, usize),
    /// Just past the closing quote.
    end: usize,
}

/// `name = "value"` starting at `p` (blanks already skipped).
fn parse_pair(b: &[u8], p: usize) -> Option<Pair> {
    let name_end = scan_name(b, p, LABEL_CHAR);
    if name_end == p {
        return None;
    }
    let mut q = skip_blanks(b, name_end);
    if b.get(q) != Some(&b'=') {
        return None;
    }
    q = skip_blanks(b, q + 1);
    if b.get(q) != Some(&b'"') {
        return None;
    }
    let v_start = q + 1;
    let mut i = v_start;
    loop {
        match b.get(i)? {
            b'"' => break,
            // Any escaped byte is skipped over; a lone trailing backslash runs off the end (None).
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Some(Pair {
        name: (p, name_end),
        value: (v_start, i),
        end: i + 1,
    })
}

/// Validates a label set whose `{` is at `open`; returns the index just past its `}`.
fn scan_label_set(b: &[u8], open: usize) -> Option<usize> {
    let mut p = open + 1;
    loop {
        p = skip_blanks(b, p);
        if b.get(p)? == &b'}' {
            return Some(p + 1);
        }
        p = skip_blanks(b, parse_pair(b, p)?.end);
        match b.get(p)? {
            b',' => p += 1,
            b'}' => return Some(p + 1),
            _ => return None,
        }
    }
}

fn unescape(v: &str) -> Cow<'_, str> {
    if !v.contains('\\') {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// Byte classes for names: label names are `[a-zA-Z_][a-zA-Z0-9_]*`, metric names may also
/// hold colons.
const LABEL_CHAR: u8 = 1;
const METRIC_CHAR: u8 = 2;
const DIGIT: u8 = 4;
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() || b == b'_' {
            t[c] = LABEL_CHAR | METRIC_CHAR;
        } else if b.is_ascii_digit() {
            t[c] = LABEL_CHAR | METRIC_CHAR | DIGIT;
        } else if b == b':' {
            t[c] = METRIC_CHAR;
        }
        c += 1;
    }
    t
};

fn is_metric_name(name: &str) -> bool {
    scan_name(name.as_bytes(), 0, METRIC_CHAR) == name.len() && !name.is_empty()
}

/// End of the name of `class` starting at `p` (`p` itself if there is none).
fn scan_name(b: &[u8], p: usize, class: u8) -> usize {
    let Some(rest) = b.get(p..) else { return p };
    match rest.first() {
        Some(&c) if CLASS[c as usize] & (class | DIGIT) == class => {}
        _ => return p,
    }
    p + rest
        .iter()
        .position(|&c| CLASS[c as usize] & class == 0)
        .unwrap_or(rest.len())
}

fn skip_blanks(b: &[u8], mut p: usize) -> usize {
    while matches!(b.get(p), Some(b' ' | b'\t')) {
        p += 1;
    }
    p
}

/// Index of the first `\n` at or after `from`, or `b.len()`.
fn find_newline(b: &[u8], from: usize) -> usize {
    find_first(b, from, |w| eq_bits(w, b'\n'), |c| c == b'\n')
}

/// End of a sample line's first token: the first `{`, blank or `\n` at or after `from`.
fn find_name_end(b: &[u8], from: usize) -> usize {
    find_first(
        b,
        from,
        |w| eq_bits(w, b'{') | eq_bits(w, b' ') | eq_bits(w, b'\t') | eq_bits(w, b'\n'),
        |c| matches!(c, b'{' | b' ' | b'\t' | b'\n'),
    )
}

/// Index of the first byte at or after `from` that `is` accepts, or `b.len()`. `hits` is the same
/// test on eight bytes at once (SWAR on u64, which wasm32 has natively), sixteen bytes a step:
/// these scans are nearly all the work on a page where only a few names are wanted.
#[inline(always)]
fn find_first(b: &[u8], from: usize, hits: impl Fn(u64) -> u64, is: impl Fn(u8) -> bool) -> usize {
    let Some(rest) = b.get(from..) else {
        return b.len();
    };
    let mut chunks = rest.chunks_exact(16);
    let mut base = from;
    for chunk in &mut chunks {
        let (lo, hi) = chunk.split_at(8);
        let (lo, hi) = (hits(word(lo)), hits(word(hi)));
        if lo | hi != 0 {
            let at = if lo != 0 {
                lo.trailing_zeros()
            } else {
                64 + hi.trailing_zeros()
            };
            return base + (at / 8) as usize;
        }
        base += 16;
    }
    let tail = chunks.remainder();
    base + tail.iter().position(|&c| is(c)).unwrap_or(tail.len())
}

/// Eight bytes, first byte lowest.
#[inline(always)]
fn word(s: &[u8]) -> u64 {
    <[u8; 8]>::try_from(s).map_or(0, u64::from_le_bytes)
}

/// The high bit of each byte of `w` equal to `c`, exact up to the first such byte: the classic
/// "has a zero byte" test on `w ^ c…c` flags falsely only bytes above a true zero, and with the
/// first byte lowest those come after it. ORing several of these keeps the lowest bit exact.
#[inline(always)]
fn eq_bits(w: u64, c: u8) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let x = w ^ (LO * c as u64);
    x.wrapping_sub(LO) & !x & HI
}

/// The samples of a page whose names `wanted` accepts, in page order; [`Samples::stats`] tells
/// what else the pass met.
pub struct Samples<'p, W> {
    page: &'p [u8],
    pos: usize,
    wanted: W,
    stats: ParseStats,
}

impl<'p, W: Fn(&str) -> bool> Samples<'p, W> {
    pub fn new(page: &'p [u8], wanted: W) -> Self {
        Samples {
            page,
            pos: 0,
            wanted,
            stats: ParseStats::default(),
        }
    }

    /// Counts so far (final once the iterator returned None).
    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    fn garbage(&mut self) {
        self.stats.garbage += 1;
        if self.stats.first_garbage_line.is_none() {
            self.stats.first_garbage_line = Some(self.stats.lines);
        }
    }
}

impl<'p, W: Fn(&str) -> bool> Iterator for Samples<'p, W> {
    type Item = Sample<'p>;

    fn next(&mut self) -> Option<Sample<'p>> {
        let page = self.page;
        while self.pos < page.len() {
            let start = self.pos;
            self.stats.lines += 1;
            let p = skip_blanks(page, start);
            if matches!(page.get(p), None | Some(b'#' | b'\n')) {
                self.pos = find_newline(page, p) + 1;
                continue;
            }
            // An unwanted line costs two scans for bytes, one to the end of its name and one from
            // there to the newline; its name is not even validated.
            let name_end = find_name_end(page, p);
            let name = page
                .get(p..name_end)
                .and_then(|n| std::str::from_utf8(n).ok());
            let name = match (name, page.get(name_end)) {
                (Some(n), Some(b'{' | b' ' | b'\t')) if !n.is_empty() => n,
                _ => {
                    // Not a sample line: blank but for a CR, or garbage.
                    let nl = find_newline(page, p);
                    self.pos = nl + 1;
                    if !trim_cr(page.get(p..nl).unwrap_or_default()).is_empty() {
                        self.garbage();
                    }
                    continue;
                }
            };
            if !(self.wanted)(name) {
                self.stats.skipped += 1;
                self.pos = find_newline(page, name_end) + 1;
                continue;
            }
            let nl = find_newline(page, name_end);
            self.pos = nl + 1;
            let rest = trim_cr(page.get(name_end..nl).unwrap_or_default());
            match parse_rest(rest).filter(|_| is_metric_name(name)) {
                Some((labels, value, timestamp)) => {
                    self.stats.samples += 1;
                    return Some(Sample {
                        name,
                        labels,
                        value,
                        timestamp,
                    });
                }
                None => self.garbage(),
            }
        }
        None
    }
}

impl<W: Fn(&str) -> bool> std::iter::FusedIterator for Samples<'_, W> {}

fn trim_cr(line: &[u8]) -> &[u8] {
    match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    }
}

/// Calls `f` with every sample whose name `wanted` accepts, in page order.
pub fn for_each_sample<'p>(
    page: &'p [u8],
    wanted: impl Fn(&str) -> bool,
    mut f: impl FnMut(Sample<'p>),
) -> ParseStats {
    let mut samples = Samples::new(page, wanted);
    for s in &mut samples {
        f(s);
    }
    samples.stats()
}

/// Labels, value and timestamp after the name.
fn parse_rest(line: &[u8]) -> Option<(Labels<'_>, f64, Option<f64>)> {
    // Blanks may separate the name from its label set.
    let mut p = skip_blanks(line, 0);
    let mut labels = Labels::default();
    if line.get(p) == Some(&b'{') {
        let end = scan_label_set(line, p)?;
        let raw = line.get(p + 1..end - 1)?;
        labels = Labels {
            raw: std::str::from_utf8(raw).ok()?,
        };
        p = end;
    }
    let (value, p) = token(line, p)?;
    let value = parse_value(value)?;
    let (timestamp, p) = match token(line, p) {
        Some((t, _)) if t.first() == Some(&b'#') => (None, p),
        Some((t, q)) => (Some(parse_value(t).filter(|t| t.is_finite())?), q),
        None => (None, p),
    };
    // Only an exemplar comment may follow.
    match token(line, p) {
        None => Some((labels, value, timestamp)),
        Some((t, _)) if t.first() == Some(&b'#') => Some((labels, value, timestamp)),
        Some(_) => None,
    }
}

/// The next blank-separated token at or after `p`, and the index after it.
fn token(line: &[u8], p: usize) -> Option<(&[u8], usize)> {
    let start = skip_blanks(line, p);
    let rest = line.get(start..)?;
    if rest.is_empty() {
        return None;
    }
    let len = rest
        .iter()
        .position(|&c| c == b' ' || c == b'\t')
        .unwrap_or(rest.len());
    Some((rest.get(..len)?, start + len))
}

fn parse_value(t: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(t).ok()?;
    // Rust's float syntax covers Prometheus' (NaN, +Inf, -Inf, exponents); like Go's it also
    // takes "inf"/"infinity" in any case, which is harmless.
    s.parse::<f64>().ok()
}

/// A metric selector as written in configuration: `name` or `name{label="value",...}`. Returns
/// the name and, when braces were written, the label set (possibly empty).
pub(crate) fn parse_selector(s: &str) -> Option<(&str, Option<Labels<'_>>)> {
    let b = s.as_bytes();
    let name_end = scan_name(b, 0, METRIC_CHAR);
    let name = s.get(..name_end).filter(|n| !n.is_empty())?;
    if name_end == b.len() {
        return Some((name, None));
    }
    if b.get(name_end) != Some(&b'{') {
        return None;
    }
    let end = scan_label_set(b, name_end)?;
    if end != b.len() {
        return None;
    }
    let raw = s.get(name_end + 1..end - 1)?;
    Some((name, Some(Labels { raw })))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const UNDER_LOAD: &str = include_str!("../../../testdata/vllm-0.32-cpu/metrics-under-load.txt");

    fn all(page: &str) -> (Vec<Sample<'_>>, ParseStats) {
        let mut v = Vec::new();
        let stats = for_each_sample(page.as_bytes(), |_| true, |s| v.push(s));
        (v, stats)
    }

    fn labels_of(s: &Sample<'_>) -> Vec<(String, String)> {
        s.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .collect()
    }

    #[test]
    fn basic_lines_comments_and_stats() {
        let page = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\nb{x=\"1\"} 2.5\n";
        let (v, st) = all(page);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "a_total");
        assert!(v[0].labels.is_empty());
        assert_eq!(v[0].value, 3.0);
        assert_eq!(v[1].labels.get("x").as_deref(), Some("1"));
        assert_eq!(v[1].value, 2.5);
        assert_eq!(
            st,
            ParseStats {
                lines: 5,
                samples: 2,
                skipped: 0,
                garbage: 0,
                first_garbage_line: None
            }
        );
    }

    #[test]
    fn colons_empty_label_set_and_trailing_comma() {
        let (v, st) = all("vllm:x{} 1\nvllm:y{a=\"b\",} 2\nz { a = \"b\" , c=\"d\" } 3\n");
        assert_eq!(st.garbage, 0);
        assert_eq!(v[0].name, "vllm:x");
        assert!(v[0].labels.is_empty());
        assert_eq!(v[1].labels.get("a").as_deref(), Some("b"));
        assert_eq!(
            labels_of(&v[2]),
            vec![("a".into(), "b".into()), ("c".into(), "d".into())]
        );
    }

    #[test]
    fn escaped_label_values_in_any_order() {
        let page = r#"m{path="C:\\dir",msg="say \"hi\"\nbye",brace="}{,=",other="\t"} 1"#;
        let (v, st) = all(page);
        assert_eq!(st.garbage, 0);
        let l = v[0].labels;
        assert_eq!(l.get("msg").as_deref(), Some("say \"hi\"\nbye"));
        assert_eq!(l.get("path").as_deref(), Some("C:\\dir"));
        assert_eq!(l.get("brace").as_deref(), Some("}{,="));
        // Unknown escapes are kept as written.
        assert_eq!(l.get("other").as_deref(), Some("\\t"));
        assert_eq!(l.get("missing"), None);
        assert!(matches!(l.get("brace"), Some(Cow::Borrowed(_))));
        assert!(matches!(l.get("msg"), Some(Cow::Owned(_))));
    }

    #[test]
    fn special_values_exponents_and_timestamps() {
        let page = "a NaN\nb +Inf\nc -Inf\nd 1.795444402257705e+09\ne 7 1700000000000\n\
                    f{x=\"y\"} -2.5e-3 -12\ng 1 # {trace_id=\"abc\"} 0.5 1\nh 2 3 # {t=\"1\"} 1\n";
        let (v, st) = all(page);
        assert_eq!(st.garbage, 0, "{st:?}");
        assert!(v[0].value.is_nan());
        assert_eq!(v[1].value, f64::INFINITY);
        assert_eq!(v[2].value, f64::NEG_INFINITY);
        assert_eq!(v[3].value, 1_795_444_402.257705);
        assert_eq!(v[4].value, 7.0);
        assert_eq!(v[4].timestamp, Some(1_700_000_000_000.0));
        assert_eq!(v[5].value, -0.0025);
        assert_eq!(v[5].timestamp, Some(-12.0));
        assert_eq!(v[6].timestamp, None);
        assert_eq!(v[7].timestamp, Some(3.0));
    }

    #[test]
    fn crlf_blank_lines_and_final_line_without_newline() {
        let page = "# TYPE a gauge\r\na{b=\"c\"} 1\r\n\r\n  \r\nb 2\r\nc 3";
        let (v, st) = all(page);
        assert_eq!(st.garbage, 0);
        assert_eq!(st.lines, 6);
        let got: Vec<_> = v.iter().map(|s| (s.name, s.value)).collect();
        assert_eq!(got, vec![("a", 1.0), ("b", 2.0), ("c", 3.0)]);
        assert_eq!(v[0].labels.get("b").as_deref(), Some("c"));
    }

    #[test]
    fn garbage_lines_are_counted_and_skipped() {
        let page = "ok 1\n\
                    {no=\"name\"} 1\n\
                    9starts_with_digit 1\n\
                    no_value\n\
                    no_value_braces{}\n\
                    bad_value 1.2.3\n\
                    unterminated{a=\"b} 1\n\
                    missing_eq{a\"b\"} 1\n\
                    no_comma{a=\"1\" b=\"2\"} 1\n\
                    trailing junk 1 2 3\n\
                    name=1\n\
                    quoted{\"a.b\"=\"x\"} 1\n\
                    lone_backslash{a=\"\\\n\
                    bad_ts 1 abc\n\
                    ok 2\n";
        let (v, st) = all(page);
        assert_eq!(
            v.iter().map(|s| s.value).collect::<Vec<_>>(),
            vec![1.0, 2.0]
        );
        assert_eq!(st.garbage, 13);
        assert_eq!(st.first_garbage_line, Some(2));
        assert_eq!(st.lines, 15);
    }

    #[test]
    fn invalid_utf8_is_garbage_only_where_it_is_read() {
        let mut page = b"a{l=\"\xff\"} 1\nb{l=\"\xff\"} 1\nc 2\n".to_vec();
        page.extend_from_slice(b"\xfe\xff 3\n");
        let mut got = Vec::new();
        let st = for_each_sample(&page, |n| n != "b", |s| got.push(s.name));
        assert_eq!(got, vec!["c"]);
        assert_eq!((st.garbage, st.skipped), (2, 1));
    }

    #[test]
    fn unwanted_lines_are_skipped_without_parsing() {
        // The unwanted lines are broken past (or in) their names; skipping must not notice.
        let page = "skip{a=\"unterminated 1\nkeep{a=\"1\"} 5\nskip 1\nbad-name{ 1\n9x 1\n";
        let mut got = Vec::new();
        let st = for_each_sample(page.as_bytes(), |n| n == "keep", |s| got.push(s.value));
        assert_eq!(got, vec![5.0]);
        assert_eq!((st.samples, st.skipped, st.garbage), (1, 4, 0));
        // Wanted, the same lines are garbage.
        let st = for_each_sample(page.as_bytes(), |_| true, |_| {});
        assert_eq!((st.samples, st.skipped, st.garbage), (2, 0, 3));
    }

    #[test]
    fn iterator_and_visitor_agree_on_the_real_page() {
        let wanted = |n: &str| n.starts_with("vllm:");
        let mut it = Samples::new(UNDER_LOAD.as_bytes(), wanted);
        let via_iter: Vec<_> = (&mut it).collect();
        let mut via_visit = Vec::new();
        let st = for_each_sample(UNDER_LOAD.as_bytes(), wanted, |s| via_visit.push(s));
        assert_eq!(via_iter, via_visit);
        assert_eq!(it.stats(), st);
        assert_eq!(st.garbage, 0);
        assert_eq!(st.lines, 630);
        assert!(st.samples > 10 && st.skipped > 50, "{st:?}");
    }

    #[test]
    fn real_page_parses_completely_without_garbage() {
        let (v, st) = all(UNDER_LOAD);
        assert_eq!(st.garbage, 0);
        assert_eq!(st.samples, v.len());
        let cache = v
            .iter()
            .find(|s| s.name == "vllm:cache_config_info")
            .map(|s| s.labels);
        let cache = cache.unwrap_or_default();
        assert_eq!(cache.get("block_size").as_deref(), Some("128"));
        assert_eq!(cache.get("num_gpu_blocks").as_deref(), Some("4096"));
        assert_eq!(
            cache.get("kv_cache_dtype_skip_layers").as_deref(),
            Some("[]")
        );
    }

    #[test]
    fn byte_scans_match_a_plain_search() {
        // Bytes next to the targets trip naive zero-byte tricks: 0x0b = '\n' + 1, 0x8a, 0x00,
        // '|' = '{' + 1, '!' = ' ' + 1.
        let alphabet = [
            b'a', b'\n', 0x0b, 0x8a, 0x00, b'{', b'|', b' ', b'!', b'\t', 0xff, b':',
        ];
        let mut b = Vec::new();
        let mut x: u32 = 7;
        for _ in 0..600 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Mostly plain bytes so that long runs without a hit occur too.
            let i = (x >> 24) as usize % 40;
            b.push(*alphabet.get(i).unwrap_or(&b'a'));
        }
        let plain = |from: usize, hit: &dyn Fn(u8) -> bool| {
            b.get(from..)
                .and_then(|r| r.iter().position(|&c| hit(c)).map(|i| i + from))
                .unwrap_or(b.len())
        };
        for from in 0..=b.len() + 2 {
            assert_eq!(
                find_newline(&b, from),
                plain(from, &|c| c == b'\n'),
                "from {from}"
            );
            assert_eq!(
                find_name_end(&b, from),
                plain(from, &|c| matches!(c, b'{' | b' ' | b'\t' | b'\n')),
                "from {from}"
            );
        }
    }

    #[test]
    fn every_prefix_of_a_real_page_parses() {
        let page = UNDER_LOAD.as_bytes();
        let full = all(UNDER_LOAD).0.len();
        // Parsing holds no state across lines, so a prefix behaves like the complete lines before
        // the cut plus the cut line alone: parse each cut line on its own at every cut point, and
        // every prefix of whole lines once.
        let mut line_start = 0;
        let mut whole_lines_samples = 0;
        for cut in 0..=page.len() {
            let mut n = 0;
            let st = for_each_sample(&page[line_start..cut], |_| true, |_| n += 1);
            assert!(st.lines <= 1 && n <= 1);
            if cut > 0 && page[cut - 1] == b'\n' {
                whole_lines_samples += n;
                line_start = cut;
            }
        }
        assert_eq!(whole_lines_samples, full);
        // And a sample of genuine prefixes end to end.
        for cut in (0..=page.len()).step_by(97) {
            let st = for_each_sample(&page[..cut], |_| true, |_| {});
            assert!(st.samples <= full);
        }
    }

    #[test]
    fn ten_megabytes_of_garbage() {
        // Deterministic noise built from the tokens a parser trips on.
        let pieces: [&[u8]; 16] = [
            b"vllm:num_requests_waiting",
            b"{",
            b"}",
            b"\"",
            b"\\",
            b"=",
            b",",
            b" ",
            b"\n",
            b"\r\n",
            b"NaN",
            b"1e+09",
            b"#",
            b"\xff\xfe",
            b"a=\"",
            b"\t",
        ];
        let mut page = Vec::with_capacity(10 << 20);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while page.len() < 10 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            page.extend_from_slice(pieces[(x % 16) as usize]);
        }
        let st = for_each_sample(&page, |_| true, |_| {});
        assert!(st.lines > 100_000);
        // One 10 MB line with no newline at all, inside an open label value.
        let mut long = b"vllm:num_requests_waiting{a=\"".to_vec();
        long.resize(10 << 20, b'\\');
        let st = for_each_sample(&long, |_| true, |_| {});
        assert_eq!((st.lines, st.garbage, st.samples), (1, 1, 0));
    }

    #[test]
    fn selectors() {
        assert_eq!(parse_selector("vllm:a").map(|s| s.0), Some("vllm:a"));
        assert!(parse_selector("vllm:a").is_some_and(|s| s.1.is_none()));
        let (n, l) = parse_selector("m{t=\"w\"}").unwrap();
        assert_eq!((n, l.unwrap().get("t").as_deref()), ("m", Some("w")));
        assert!(parse_selector("m{}").unwrap().1.unwrap().is_empty());
        for bad in ["", "1m", "m{", "m{t=\"w\"} ", "m x", "m{t=w}"] {
            assert!(parse_selector(bad).is_none(), "{bad}");
        }
    }
}
