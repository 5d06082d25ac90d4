//! `${VAR}` expansion for `--config.expand-env` / `config check --expand-env`, with exactly the
//! syntax and quirks of the expander the old agent used (drone/envsubst v2), so a config that
//! expanded one way there expands the same way here.
//!
//! # Syntax
//!
//! Outside `${...}` everything is text; `$$` is a literal `$`, and a `$` not followed by `{` or
//! `$` is kept (`$1` stays `$1`: relabel replacements are untouched). Inside:
//!
//! | form | value |
//! | --- | --- |
//! | `${VAR}` | the variable, empty when unset |
//! | `${VAR:-word}` `${VAR:=word}` `${VAR=word}` `${VAR:?word}` `${VAR:+word}` | the variable, or `word` when it is unset or empty (all five behave alike, as in the old agent) |
//! | `${#VAR}` | its length in bytes |
//! | `${VAR^}` `${VAR^^}` `${VAR,}` `${VAR,,}` | first character / all upper-cased, lower-cased |
//! | `${VAR:pos}` `${VAR:pos:len}` | a substring (byte offsets, negative `pos` counts from the end) |
//! | `${VAR#glob}` `${VAR##glob}` `${VAR%glob}` `${VAR%%glob}` | the shortest/longest matching prefix/suffix removed |
//! | `${VAR/from/to}` `${VAR//from/to}` `${VAR/#from/to}` `${VAR/%from/to}` | first / every / prefix / suffix occurrence replaced (`\/` and `\\` escape) |
//!
//! `word`, `glob`, `from` and `to` may hold further `${...}`. A name is letters, digits and `_`.
//!
//! **A name made only of digits is a regex capture reference, not a variable**: `${1}` expands
//! to `${1}` itself, so `replacement: /api/v1/nodes/${1}/proxy/metrics` survives expansion.
//! The operators still apply to that text (`${1:-x}` is `${1}`, since `${1}` is not empty), as
//! the old agent documented.
//!
//! Anything else after `${` (`${VAR-x}`, `${VAR x}`, `${}`, an unclosed `${`) is an error.
//!
//! Two deliberate departures, neither of which changes a config that worked there: a NUL
//! character is text (the old expander silently dropped everything after it), and `${` nested
//! more than [`MAX_NESTING`] deep is refused (the old one recursed without bound).

use std::fmt;

/// Deepest `${` nesting accepted inside a default, pattern or replacement.
pub const MAX_NESTING: usize = 64;

/// Why a text could not be expanded, with the old expander's wording, and the 1-based line of
/// the `${` it was reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub line: usize,
    pub reason: &'static str,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

const BAD_SUBSTITUTION: &str = "bad substitution";
const MISSING_CLOSING_BRACE: &str = "missing closing brace";
const PARSE_VARIABLE_NAME: &str = "unable to parse variable name";
const PARSE_FUNC_SUBSTITUTION: &str = "unable to parse substitution within function";
const PARSE_DEFAULT_FUNCTION: &str = "unable to parse default function";
const TOO_DEEP: &str = "${ nested too deeply";

/// Expands `text`, looking variables up with `lookup` (`None` is unset). Names made only of
/// digits are never looked up (see the module docs).
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let nodes = Parser::new(text).parse()?;
    let mapper = |name: &str| {
        if !name.is_empty() && name.chars().all(char::is_numeric) {
            format!("${{{name}}}")
        } else {
            lookup(name).unwrap_or_default()
        }
    };
    let mut out = Vec::with_capacity(text.len());
    for n in &nodes {
        n.eval(&mapper, &mut out);
    }
    // Only a substring or trim cutting a multi-byte character can make this lossy.
    Ok(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()))
}

#[derive(Debug)]
enum Node {
    Text(String),
    /// `${param}` with an operator (`name`, empty for none) and its arguments.
    Func {
        param: String,
        name: String,
        args: Vec<Node>,
    },
}

impl Node {
    fn eval(&self, mapper: &dyn Fn(&str) -> String, out: &mut Vec<u8>) {
        match self {
            Node::Text(t) => out.extend_from_slice(t.as_bytes()),
            Node::Func { param, name, args } => {
                let args: Vec<Vec<u8>> = args
                    .iter()
                    .map(|a| {
                        let mut buf = Vec::new();
                        a.eval(mapper, &mut buf);
                        buf
                    })
                    .collect();
                let value = mapper(param).into_bytes();
                out.extend_from_slice(&apply(name, &value, &args));
            }
        }
    }
}

// Scanner modes and escapes, as in the original.
const SCAN_IDENT: u8 = 1;
const SCAN_LBRACK: u8 = 2;
const SCAN_RBRACK: u8 = 4;
const SCAN_ESCAPE: u8 = 8;
const ESC_DOLLAR: u8 = 1;
const ESC_BACKSLASH: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Illegal,
    Eof,
    Ident,
    Lbrack,
    Rbrack,
}

/// Whether a character is accepted at offset `i` (1-based) of the token being scanned.
type Accept = fn(char, usize) -> bool;

/// The original's scanner over characters; escapes are removed from the buffer as they are
/// read, as there.
struct Parser {
    buf: Vec<char>,
    pos: usize,
    start: usize,
    width: usize,
    mode: u8,
    escapes: u8,
    accept: Accept,
    depth: usize,
    /// Where the `${` being parsed started, for the error's line.
    func_start: usize,
}

impl Parser {
    fn new(text: &str) -> Self {
        Parser {
            buf: text.chars().collect(),
            pos: 0,
            start: 0,
            width: 0,
            mode: 0,
            escapes: 0,
            accept: |_, _| true,
            depth: 0,
            func_start: 0,
        }
    }

    fn error(&self, reason: &'static str) -> ExpandError {
        let end = self.func_start.min(self.buf.len());
        ExpandError {
            line: 1 + self.buf[..end].iter().filter(|&&c| c == '\n').count(),
            reason,
        }
    }

    fn read(&mut self) -> Option<char> {
        match self.buf.get(self.pos) {
            None => {
                self.width = 0;
                None
            }
            Some(&c) => {
                self.width = 1;
                self.pos += 1;
                Some(c)
            }
        }
    }

    fn unread(&mut self) {
        self.pos -= self.width;
    }

    /// Drops the escape character just read; the escaped one becomes part of the token.
    fn skip(&mut self) {
        self.buf.remove(self.pos - 1);
    }

    fn peek(&mut self) -> Option<char> {
        let c = self.read();
        self.unread();
        c
    }

    fn string(&self) -> String {
        self.buf[self.start..self.pos].iter().collect()
    }

    fn scan(&mut self) -> Token {
        self.start = self.pos;
        let Some(r) = self.read() else {
            return Token::Eof;
        };
        if self.scan_lbrack(r) {
            Token::Lbrack
        } else if self.mode & SCAN_RBRACK != 0 && r == '}' {
            Token::Rbrack
        } else if self.scan_ident(r) {
            Token::Ident
        } else {
            Token::Illegal
        }
    }

    fn scan_ident(&mut self, r: char) -> bool {
        if self.mode & SCAN_IDENT == 0 {
            return false;
        }
        if self.scan_escaped(r) {
            self.skip();
        } else if !(self.accept)(r, self.pos - self.start) {
            return false;
        }
        loop {
            let Some(r) = self.read() else {
                self.unread();
                break;
            };
            if self.scan_lbrack(r) {
                self.unread();
                self.unread();
                break;
            }
            if self.scan_escaped(r) {
                self.skip();
                continue;
            }
            if !(self.accept)(r, self.pos - self.start) {
                self.unread();
                break;
            }
        }
        true
    }

    fn scan_lbrack(&mut self, r: char) -> bool {
        if self.mode & SCAN_LBRACK == 0 || r != '$' {
            return false;
        }
        if self.read() == Some('{') {
            return true;
        }
        self.unread();
        false
    }

    fn scan_escaped(&mut self, r: char) -> bool {
        if self.mode & SCAN_ESCAPE == 0 {
            return false;
        }
        match r {
            '$' if self.escapes & ESC_DOLLAR != 0 => self.peek() == Some('$'),
            '\\' if self.escapes & ESC_BACKSLASH != 0 => {
                matches!(self.peek(), Some('/' | '\\'))
            }
            _ => false,
        }
    }

    /// The whole text: alternating text and `${...}`.
    fn parse(mut self) -> Result<Vec<Node>, ExpandError> {
        let mut nodes = Vec::new();
        loop {
            self.accept = |_, _| true;
            self.mode = SCAN_IDENT | SCAN_LBRACK | SCAN_ESCAPE;
            self.escapes = ESC_DOLLAR;
            match self.scan() {
                Token::Ident => nodes.push(Node::Text(self.string())),
                Token::Eof => return Ok(nodes),
                Token::Lbrack => {
                    self.func_start = self.start;
                    nodes.push(self.parse_func()?);
                }
                _ => return Err(self.error(BAD_SUBSTITUTION)),
            }
        }
    }

    /// After `${`.
    fn parse_func(&mut self) -> Result<Node, ExpandError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(self.error(TOO_DEEP));
        }
        let node = self.parse_func_inner();
        self.depth -= 1;
        node
    }

    fn parse_func_inner(&mut self) -> Result<Node, ExpandError> {
        self.escapes = ESC_DOLLAR | ESC_BACKSLASH;
        if self.peek() == Some('#') {
            return self.parse_len_func();
        }
        self.accept = accept_ident;
        self.mode = SCAN_IDENT;
        let name = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(PARSE_VARIABLE_NAME)),
        };
        match self.peek() {
            Some(':') => return self.parse_default_or_substr(name),
            Some('=') => return self.parse_default_func(name),
            Some(',' | '^') => return self.parse_casing_func(name),
            Some('/') => return self.parse_replace_func(name),
            Some('#') => return self.parse_remove_func(name, |r, i| r == '#' && i < 3),
            Some('%') => return self.parse_remove_func(name, |r, i| r == '%' && i < 3),
            _ => {}
        }
        self.accept = accept_ident;
        self.mode = SCAN_RBRACK;
        match self.scan() {
            Token::Rbrack => Ok(func(name, String::new(), Vec::new())),
            _ => Err(self.error(MISSING_CLOSING_BRACE)),
        }
    }

    /// One argument: text, or a nested `${...}`.
    fn parse_param(&mut self, accept: Accept, mode: u8) -> Result<Node, ExpandError> {
        self.accept = accept;
        self.mode = mode | SCAN_LBRACK;
        match self.scan() {
            Token::Lbrack => self.parse_func(),
            Token::Ident | Token::Rbrack => Ok(Node::Text(self.string())),
            _ => Err(self.error(PARSE_FUNC_SUBSTITUTION)),
        }
    }

    fn parse_default_or_substr(&mut self, name: String) -> Result<Node, ExpandError> {
        self.read();
        let r = self.peek();
        self.unread();
        match r {
            Some('=' | '-' | '?' | '+') => self.parse_default_func(name),
            _ => self.parse_substr_func(name),
        }
    }

    /// `${param:offset}`, `${param:offset:length}`.
    fn parse_substr_func(&mut self, param: String) -> Result<Node, ExpandError> {
        self.accept = |r, i| i == 1 && r == ':';
        self.mode = SCAN_IDENT;
        let name = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(BAD_SUBSTITUTION)),
        };
        let mut args = vec![self.parse_param(|r, _| r != ':' && r != '}', SCAN_IDENT)?];
        self.accept = |r, _| r == ':';
        self.mode = SCAN_IDENT | SCAN_RBRACK;
        match self.scan() {
            Token::Rbrack => return Ok(func(param, name, args)),
            Token::Ident => {}
            _ => return Err(self.error(BAD_SUBSTITUTION)),
        }
        args.push(self.parse_param(|r, _| r != '}', SCAN_IDENT)?);
        self.consume_rbrack()?;
        Ok(func(param, name, args))
    }

    /// `${param#word}`, `${param##word}`, `${param%word}`, `${param%%word}`.
    fn parse_remove_func(&mut self, param: String, accept: Accept) -> Result<Node, ExpandError> {
        self.accept = accept;
        self.mode = SCAN_IDENT;
        let name = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(BAD_SUBSTITUTION)),
        };
        let args = vec![self.parse_param(|r, _| r != '}', SCAN_IDENT)?];
        self.consume_rbrack()?;
        Ok(func(param, name, args))
    }

    /// `${param/pattern/string}` and its `//`, `/#`, `/%` forms.
    fn parse_replace_func(&mut self, param: String) -> Result<Node, ExpandError> {
        self.accept = |r, i| (i == 1 && r == '/') || (i == 2 && matches!(r, '/' | '#' | '%'));
        self.mode = SCAN_IDENT;
        let name = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(BAD_SUBSTITUTION)),
        };
        let mut args = vec![self.parse_param(|r, _| r != '/', SCAN_IDENT | SCAN_ESCAPE)?];
        self.accept = |r, _| r == '/';
        self.mode = SCAN_IDENT;
        if self.scan() != Token::Ident {
            return Err(self.error(BAD_SUBSTITUTION));
        }
        if self.peek() == Some('}') {
            self.consume_rbrack()?;
            return Ok(func(param, name, args));
        }
        args.push(self.parse_param(|r, _| r != '}', SCAN_IDENT | SCAN_ESCAPE)?);
        self.consume_rbrack()?;
        Ok(func(param, name, args))
    }

    /// `${param=word}`, `${param:=word}`, `${param:-word}`, `${param:?word}`, `${param:+word}`.
    fn parse_default_func(&mut self, param: String) -> Result<Node, ExpandError> {
        self.accept = if self.peek() == Some('=') {
            |r, i| i == 1 && r == '='
        } else {
            |r, i| (i == 1 && r == ':') || (i == 2 && matches!(r, '=' | '-' | '?' | '+'))
        };
        self.mode = SCAN_IDENT;
        let name = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(PARSE_DEFAULT_FUNCTION)),
        };
        let mut args = Vec::new();
        loop {
            if self.peek() == Some('}') {
                self.consume_rbrack()?;
                return Ok(func(param, name, args));
            }
            args.push(self.parse_param(|r, _| r != '}', SCAN_IDENT)?);
        }
    }

    /// `${param,}`, `${param,,}`, `${param^}`, `${param^^}`.
    fn parse_casing_func(&mut self, param: String) -> Result<Node, ExpandError> {
        self.accept = |r, i| (r == ',' || r == '^') && i < 3;
        self.mode = SCAN_IDENT;
        let name = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(BAD_SUBSTITUTION)),
        };
        self.consume_rbrack()?;
        Ok(func(param, name, Vec::new()))
    }

    /// `${#param}`.
    fn parse_len_func(&mut self) -> Result<Node, ExpandError> {
        self.accept = |r, i| r == '#' && i == 1;
        self.mode = SCAN_IDENT;
        let name = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(BAD_SUBSTITUTION)),
        };
        self.accept = accept_ident;
        self.mode = SCAN_IDENT;
        let param = match self.scan() {
            Token::Ident => self.string(),
            _ => return Err(self.error(BAD_SUBSTITUTION)),
        };
        self.consume_rbrack()?;
        Ok(func(param, name, Vec::new()))
    }

    fn consume_rbrack(&mut self) -> Result<(), ExpandError> {
        self.mode = SCAN_RBRACK;
        if self.scan() != Token::Rbrack {
            return Err(self.error(BAD_SUBSTITUTION));
        }
        Ok(())
    }
}

fn func(param: String, name: String, args: Vec<Node>) -> Node {
    Node::Func { param, name, args }
}

fn accept_ident(r: char, _: usize) -> bool {
    r.is_alphabetic() || r.is_numeric() || r == '_'
}

/// The operator `name` applied to a variable's value (bytes, as the original works on bytes).
fn apply(name: &str, s: &[u8], args: &[Vec<u8>]) -> Vec<u8> {
    let text = || String::from_utf8_lossy(s).into_owned();
    let arg = |i: usize| args.get(i).map(Vec::as_slice);
    match name {
        "," => map_first(s, |c| c.to_lowercase().next().unwrap_or(c)),
        ",," => text().to_lowercase().into_bytes(),
        "^" => map_first(s, |c| c.to_uppercase().next().unwrap_or(c)),
        "^^" => text().to_uppercase().into_bytes(),
        "#" if args.is_empty() => s.len().to_string().into_bytes(),
        "#" => arg(0).map_or_else(|| s.to_vec(), |p| trim_shortest(s, p).to_vec()),
        "##" => arg(0).map_or_else(|| s.to_vec(), |p| trim_longest(s, p).to_vec()),
        "%" => arg(0).map_or_else(|| s.to_vec(), |p| reversed(s, p, trim_shortest)),
        "%%" => arg(0).map_or_else(|| s.to_vec(), |p| reversed(s, p, trim_longest)),
        ":" => substr(s, args),
        "/#" => match args {
            [from, to] if s.starts_with(from) => [to.as_slice(), &s[from.len()..]].concat(),
            _ => s.to_vec(),
        },
        "/%" => match args {
            [from, to] if s.ends_with(from) => [&s[..s.len() - from.len()], to.as_slice()].concat(),
            _ => s.to_vec(),
        },
        "/" => replace(s, args, 1),
        "//" => replace(s, args, usize::MAX),
        // `=`, `:=`, `:-`, `:?`, `:+` and anything unknown: a default.
        _ => {
            if s.is_empty() && !args.is_empty() {
                args.concat()
            } else {
                s.to_vec()
            }
        }
    }
}

fn map_first(s: &[u8], f: impl Fn(char) -> char) -> Vec<u8> {
    let text = String::from_utf8_lossy(s);
    let mut chars = text.chars();
    match chars.next() {
        None => Vec::new(),
        Some(c) => {
            let mut out = f(c).to_string();
            out.push_str(chars.as_str());
            out.into_bytes()
        }
    }
}

/// `${VAR:pos[:len]}` with bash's rules for out-of-range values.
fn substr(s: &[u8], args: &[Vec<u8>]) -> Vec<u8> {
    let int = |a: &[u8]| std::str::from_utf8(a).ok()?.parse::<i64>().ok();
    let Some(pos) = args.first().and_then(|a| int(a)) else {
        return s.to_vec();
    };
    let len = i64::try_from(s.len()).unwrap_or(i64::MAX);
    let pos = if pos < 0 { (len + pos).max(0) } else { pos };
    let from = |p: i64| usize::try_from(p).ok().and_then(|p| s.get(p..));
    let Some(length) = args.get(1) else {
        return if pos < len {
            from(pos).unwrap_or_default().to_vec()
        } else {
            Vec::new()
        };
    };
    let Some(length) = int(length) else {
        return s.to_vec();
    };
    if pos.saturating_add(length) >= len {
        return if pos < len {
            from(pos).unwrap_or_default().to_vec()
        } else {
            Vec::new()
        };
    }
    // A negative length that ends before `pos` is an empty range here, where Go would panic.
    match (usize::try_from(pos), usize::try_from(pos + length)) {
        (Ok(a), Ok(b)) if a <= b => s[a..b].to_vec(),
        _ => Vec::new(),
    }
}

/// Go's `strings.Replace(s, from, to, n)` (an empty `from` matches before every character).
fn replace(s: &[u8], args: &[Vec<u8>], n: usize) -> Vec<u8> {
    let (from, to) = match args {
        [] => return s.to_vec(),
        [from] => (from.as_slice(), &[][..]),
        [from, to, ..] => (from.as_slice(), to.as_slice()),
    };
    let text = String::from_utf8_lossy(s);
    let (from, to) = (String::from_utf8_lossy(from), String::from_utf8_lossy(to));
    text.replacen(from.as_ref(), to.as_ref(), n).into_bytes()
}

fn reversed(
    s: &[u8],
    pattern: &[u8],
    trim: for<'a, 'b> fn(&'a [u8], &'b [u8]) -> &'a [u8],
) -> Vec<u8> {
    let rev = |b: &[u8]| -> Vec<u8> {
        String::from_utf8_lossy(b)
            .chars()
            .rev()
            .collect::<String>()
            .into_bytes()
    };
    let (r, p) = (rev(s), rev(pattern));
    rev(trim(&r, &p))
}

/// Removes the shortest prefix of `s` that `pattern` matches.
fn trim_shortest<'a>(s: &'a [u8], pattern: &[u8]) -> &'a [u8] {
    let mut shortest = None;
    for i in 0..s.len() {
        match glob_match(pattern, &s[..s.len() - i]) {
            Err(()) => return s,
            Ok(true) => shortest = Some(s.len() - i),
            Ok(false) => {}
        }
    }
    match shortest {
        Some(n) if n > 0 => &s[n..],
        _ => s,
    }
}

/// Removes the longest prefix of `s` that `pattern` matches.
fn trim_longest<'a>(s: &'a [u8], pattern: &[u8]) -> &'a [u8] {
    for i in 0..s.len() {
        match glob_match(pattern, &s[..s.len() - i]) {
            Err(()) => return s,
            Ok(true) => return &s[s.len() - i..],
            Ok(false) => {}
        }
    }
    s
}

/// The first UTF-8 character of `b` and its length; `(U+FFFD, 1)` for an invalid byte and
/// `(U+FFFD, 0)` at the end, as Go's `utf8.DecodeRune`.
fn decode(b: &[u8]) -> (char, usize) {
    let Some(&first) = b.first() else {
        return (char::REPLACEMENT_CHARACTER, 0);
    };
    let n = match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return (char::REPLACEMENT_CHARACTER, 1),
    };
    match b.get(..n).and_then(|c| std::str::from_utf8(c).ok()) {
        Some(c) => (c.chars().next().unwrap_or(char::REPLACEMENT_CHARACTER), n),
        None => (char::REPLACEMENT_CHARACTER, 1),
    }
}

/// Shell glob matching of the whole of `name` (the old expander's copy of Go's `path.Match`,
/// where `*` and `?` also match `/`). `Err` is a malformed pattern.
fn glob_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, ()> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(true);
        }
        let (t, ok, err) = match_chunk(chunk, name);
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if err {
            return Err(());
        }
        if star {
            for i in 0..name.len() {
                let (t, ok, err) = match_chunk(chunk, &name[i + 1..]);
                if ok {
                    if pattern.is_empty() && !t.is_empty() {
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                if err {
                    return Err(());
                }
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while pattern.first() == Some(&b'*') {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Whether `chunk` (no `*`) matches the start of `s`: the rest of `s`, matched, malformed.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> (&'a [u8], bool, bool) {
    const NO: (&[u8], bool, bool) = (&[], false, false);
    const BAD: (&[u8], bool, bool) = (&[], false, true);
    while let Some(&c) = chunk.first() {
        if s.is_empty() {
            return NO;
        }
        match c {
            b'[' => {
                let (r, n) = decode(s);
                s = &s[n..];
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let Some((lo, rest)) = get_esc(chunk) else {
                        return BAD;
                    };
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let Some((h, rest)) = get_esc(&chunk[1..]) else {
                            return BAD;
                        };
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    return NO;
                }
            }
            b'?' => {
                let (_, n) = decode(s);
                s = &s[n..];
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return BAD;
                    }
                }
                if chunk[0] != s[0] {
                    return NO;
                }
                s = &s[1..];
                chunk = &chunk[1..];
            }
        }
    }
    (s, true, false)
}

/// A possibly escaped character of a class; `None` when the class is malformed.
fn get_esc(mut chunk: &[u8]) -> Option<(char, &[u8])> {
    if chunk.is_empty() || chunk[0] == b'-' || chunk[0] == b']' {
        return None;
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return None;
        }
    }
    let (r, n) = decode(chunk);
    if r == char::REPLACEMENT_CHARACTER && n == 1 {
        return None;
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return None;
    }
    Some((r, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)], input: &str) -> Result<String, ExpandError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        expand(input, |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    /// The old expander's own cases (drone/envsubst `eval_test.go`), same inputs and outputs.
    #[test]
    fn the_old_expanders_cases() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[], "abcdEFGH28ij", "abcdEFGH28ij"),
            (&[("var01", "abcdEFGH28ij")], "${#var01}", "12"),
            (&[("var01", "abcdEFGH28ij")], "${var01^}", "AbcdEFGH28ij"),
            (&[("var01", "abcdEFGH28ij")], "${var01^^}", "ABCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,}", "aBCDEFGH28IJ"),
            (&[("var01", "ABCDEFGH28IJ")], "${var01,,}", "abcdefgh28ij"),
            (
                &[("path_name", "/home/bozo/ideas/thoughts.for.today")],
                "${path_name:11}",
                "ideas/thoughts.for.today",
            ),
            (
                &[("path_name", "/home/bozo/ideas/thoughts.for.today")],
                "${path_name:11:5}",
                "ideas",
            ),
            (&[("var", "abc")], "${var=xyz}", "abc"),
            (&[], "${var=xyz}", "xyz"),
            (
                &[("default_var", "foo")],
                "something ${var=${default_var}}",
                "something foo",
            ),
            (
                &[("default_var", "foo1")],
                "foo: ${var=${default_var}-suffix}",
                "foo: foo1-suffix",
            ),
            (
                &[("default_var", "foo1")],
                "foo: ${var=prefix${default_var}-suffix}",
                "foo: prefixfoo1-suffix",
            ),
            (&[], "${var:=xyz}", "xyz"),
            (
                &[("stringZ", "abcABC123ABCabc")],
                "${stringZ/%abc/XYZ}",
                "abcABC123ABCXYZ",
            ),
            (
                &[("stringZ", "abcABC123ABCabc")],
                "${stringZ/#abc/XYZ}",
                "XYZABC123ABCabc",
            ),
            (
                &[("stringZ", "abcABC123ABCabc")],
                "${stringZ//abc/xyz}",
                "xyzABC123ABCxyz",
            ),
            (
                &[("stringZ", "abcABC123ABCabc")],
                "${stringZ/abc/xyz}",
                "xyzABC123ABCabc",
            ),
            (
                &[("filename", "bash.string.txt")],
                "${filename#*.}",
                "string.txt",
            ),
            (&[("filename", "path/to/file")], "${filename#*/}", "to/file"),
            (
                &[("filename", "/path/to/file")],
                "${filename#*/}",
                "path/to/file",
            ),
            (&[("filename", "bash.string.txt")], "${filename##*.}", "txt"),
            (&[("filename", "path/to/file")], "${filename##*/}", "file"),
            (&[("filename", "/path/to/file")], "${filename##*/}", "file"),
            (
                &[("filename", "bash.string.txt")],
                "${filename%.*}",
                "bash.string",
            ),
            (
                &[("filename", "bash.string.txt")],
                "${filename%%.*}",
                "bash",
            ),
            (
                &[("var01", "abcdEFGH28ij")],
                "${var=${var01^^}}",
                "ABCDEFGH28IJ",
            ),
            (&[("var01", "abcdEFGH28ij")], "$${var01}", "${var01}"),
            (
                &[("var01", "abcdEFGH28ij")],
                "some text ${var01}$${var$${var01}$var01${var01}",
                "some text abcdEFGH28ij${var${var01}$var01abcdEFGH28ij",
            ),
            (
                &[("default_var", "foo")],
                "something $${var=${default_var}}",
                "something ${var=foo}",
            ),
            (&[("stringZ", "foo/bar")], r"${stringZ/\//-}", "foo-bar"),
            (
                &[("stringZ", "foo/bar/baz")],
                r"${stringZ//\//-}",
                "foo-bar-baz",
            ),
            (
                &[("default_var", "foo")],
                r"\\something ${var=${default_var}}",
                r"\\something foo",
            ),
            (&[("stringZ", "foo.bar")], "${stringZ/./}", "foobar"),
        ];
        for (vars, input, want) in cases {
            assert_eq!(with(vars, input).as_deref(), Ok(*want), "{input}");
        }
    }

    /// The old agent's `getenv`: names made only of digits are capture references.
    #[test]
    fn numeric_names_are_capture_references() {
        let vars = [("1", "set"), ("HOST", "h")];
        for (input, want) in [
            ("${1}", "${1}"),
            (
                "/api/v1/nodes/${1}/proxy/metrics",
                "/api/v1/nodes/${1}/proxy/metrics",
            ),
            ("${1}:${2}", "${1}:${2}"),
            ("${10}", "${10}"),
            ("${1:-default}", "${1}"),
            ("${HOST}-${1}", "h-${1}"),
            ("$1 and $$x", "$1 and $x"),
            ("$HOST", "$HOST"),
            ("${1_}", ""),
        ] {
            assert_eq!(with(&vars, input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unset_and_empty() {
        let vars = [("EMPTY", "")];
        assert_eq!(with(&vars, "${NOPE}").as_deref(), Ok(""));
        assert_eq!(with(&vars, "${NOPE:-d}").as_deref(), Ok("d"));
        assert_eq!(with(&vars, "${EMPTY:-d}").as_deref(), Ok("d"));
        assert_eq!(with(&vars, "${EMPTY=d}").as_deref(), Ok("d"));
        assert_eq!(with(&vars, "${NOPE:+d}").as_deref(), Ok("d"));
    }

    #[test]
    fn errors_carry_the_old_wording_and_the_line() {
        for (input, reason, line) in [
            ("a\n${OPEN", MISSING_CLOSING_BRACE, 2),
            ("${A B}", MISSING_CLOSING_BRACE, 1),
            ("${VAR-x}", MISSING_CLOSING_BRACE, 1),
            ("x\ny\n${}", PARSE_VARIABLE_NAME, 3),
            ("${.}", PARSE_VARIABLE_NAME, 1),
            ("${VAR:}", PARSE_FUNC_SUBSTITUTION, 1),
            ("${VAR:-x", PARSE_FUNC_SUBSTITUTION, 1),
            ("${VAR,x}", BAD_SUBSTITUTION, 1),
        ] {
            let e = with(&[], input).unwrap_err();
            assert_eq!((e.reason, e.line), (reason, line), "{input}");
        }
        let deep = format!("{}{}", "${A:-".repeat(100), "}".repeat(100));
        assert_eq!(with(&[], &deep).unwrap_err().reason, TOO_DEEP);
        let ok = format!(
            "{}x{}",
            "${A:-".repeat(MAX_NESTING),
            "}".repeat(MAX_NESTING)
        );
        assert_eq!(with(&[], &ok).as_deref(), Ok("x"));
    }

    #[test]
    fn substrings_and_globs_at_the_edges() {
        let v = [("V", "abcdef")];
        for (input, want) in [
            ("${V:-2}", "abcdef"),
            ("${V:2}", "cdef"),
            ("${V:10}", ""),
            ("${V:-2:1}", "abcdef"),
            ("${V:1:100}", "bcdef"),
            ("${V:x}", "abcdef"),
            ("${V#[a-b]}", "bcdef"),
            ("${V#[^a]}", "abcdef"),
            ("${V#\\a}", "bcdef"),
            ("${V##*}", ""),
            ("${V#?}", "bcdef"),
            ("${V#[}", "abcdef"),
            ("${V%?}", "abcde"),
        ] {
            assert_eq!(with(&v, input).as_deref(), Ok(want), "{input}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "[a-z$\\{\\}:=#%/^,\\\\\\-?+\\[\\]*1 \n]{0,40}") {
            let _ = with(&[("a", "xyz"), ("b", "")], &text);
        }
    }
}
