//! A small expression language for filtering records and computing fields.
//!
//! Job files use it to filter JSON records (`value > 10 and key != 'a'`) and to
//! compute new fields (`price * qty`). An expression is parsed once with
//! [`Expr::parse`] and then evaluated per record with [`Expr::eval`] or
//! [`Expr::eval_bool`]; a record is a JSON object
//! (`serde_json::Map<String, serde_json::Value>`).
//!
//! # Grammar
//!
//! Operators from lowest to highest precedence (`{ }` means "zero or more",
//! `[ ]` means "optional"):
//!
//! ```text
//! expr     = or ;
//! or       = and { ( "or" | "||" ) and } ;
//! and      = not { ( "and" | "&&" ) not } ;
//! not      = ( "not" | "!" ) not | compare ;
//! compare  = sum [ ( "==" | "!=" | "<" | "<=" | ">" | ">=" ) sum ] ;
//! sum      = product { ( "+" | "-" ) product } ;
//! product  = unary { ( "*" | "/" | "%" ) unary } ;
//! unary    = "-" unary | primary ;
//! primary  = literal | call | path | "(" expr ")" ;
//! call     = function "(" [ expr { "," expr } ] ")" ;
//! path     = name { "." name } ;
//! name     = identifier | "`" quoted-name "`" ;
//! literal  = integer | float | string | "true" | "false" | "null" ;
//! ```
//!
//! * Binary operators are left-associative (`10 - 2 - 3` is `(10 - 2) - 3`),
//!   except comparisons, which do not chain: `a < b < c` is a parse error
//!   (write `(a < b) == c` if that is really meant).
//! * `not`/`!` binds looser than comparisons: `not a == b` is `not (a == b)`,
//!   and a `not` cannot stand as an operand of a comparison or arithmetic
//!   operator without parentheses (`x == (not y)`).
//! * Keywords `and`, `or`, `not`, `true`, `false`, `null` are
//!   case-insensitive (`AND`, `Or`, `NULL`) and reserved: a field with such a
//!   name must be quoted (`` `and` ``), except after a dot (`a.not` is fine).
//! * Whitespace (any Unicode white space, including newlines) separates tokens
//!   and is otherwise ignored.
//!
//! ## Tokens
//!
//! * **Integers**: decimal digits, an `i64` (`0`, `42`, `-7` is unary minus
//!   applied to `7`; `-9223372036854775808` is accepted). Larger literals are
//!   a parse error.
//! * **Floats**: digits with a fraction and/or an exponent: `1.5`, `1e3`,
//!   `2.5E-3`. Digits are required on both sides of the dot (`.5` and `1.`
//!   are errors). A literal that overflows to infinity is a parse error.
//! * **Strings**: in single or double quotes, e.g. `'abc'`, `"it's"`. Escapes:
//!   `\\`, `\'`, `\"`, `` \` ``, `\n`, `\t`, `\r`; any other escape is a parse
//!   error.
//! * **Identifiers**: `[A-Za-z_][A-Za-z0-9_]*` (ASCII only).
//! * **Quoted names**: any text in backticks, with the same escapes as
//!   strings: `` `weird name` ``, `` `a.b` `` (one field called `a.b`).
//!
//! ## Field references
//!
//! A path `a.b.c` looks up `a` in the record, then `b` in that object, then
//! `c`. If any step is missing, or an intermediate value is not an object, the
//! path evaluates to `null`. Each segment is an identifier (any identifier,
//! keywords included, after a dot) or a quoted name: `` a.`b c`.d ``.
//!
//! ## Functions
//!
//! Function names are case-insensitive. An unknown name or a wrong number of
//! arguments is a parse error. A name not followed by `(` is a field
//! reference, so fields may be called `len` or `abs`.
//!
//! | function | result |
//! |---|---|
//! | `abs(x)` | absolute value of a number (integer stays integer; `abs` of the minimum `i64` is an overflow error) |
//! | `lower(s)` | string in lower case (Unicode) |
//! | `upper(s)` | string in upper case (Unicode) |
//! | `len(x)` | number of characters (Unicode scalar values) in a string, or number of elements of an array |
//! | `coalesce(a, b, ...)` | first argument that is not `null` (or `null`); at least one argument; later arguments are not evaluated once a non-null one is found |
//!
//! `abs`, `lower`, `upper` and `len` return `null` for a `null` argument; any
//! other argument type is an evaluation error.
//!
//! # Semantics
//!
//! Values are JSON values; numbers are either integers (`i64`) or floats
//! (`f64`). Record integers that do not fit an `i64` (above `i64::MAX`) are
//! compared exactly but take part in arithmetic as floats.
//!
//! * **Arithmetic** (`+ - * / %`, unary `-`):
//!   * if either operand is `null`, the result is `null` (whatever the other
//!     operand is);
//!   * integer op integer gives an integer, with overflow checked: overflow is
//!     an error (also `-x`, `abs(x)`, `i64::MIN / -1`, `i64::MIN % -1`);
//!   * if either operand is a float, the result is a float; a result that is
//!     not finite (too large) is an error;
//!   * `/` gives an integer only when both operands are integers and the
//!     division is exact (`6 / 3` is `2`), otherwise a float (`7 / 2` is
//!     `3.5`);
//!   * `%` is the remainder of truncating division; its sign follows the
//!     dividend (`-7 % 3` is `-1`, `7.5 % 2` is `1.5`);
//!   * division or remainder by zero (integer `0` or float `0.0`) is an error;
//!   * `+` on two strings concatenates them;
//!   * any other combination (e.g. `'a' * 2`, `true + 1`) is an error naming
//!     the operator and both types.
//! * **Equality** (`==`, `!=`): numbers compare by numeric value across
//!   integers and floats (`1 == 1.0`; exact, without rounding the integer);
//!   all other values compare by JSON equality (`null == null`, strings,
//!   booleans, arrays and objects structurally). Values of different types are
//!   simply unequal (`1 == '1'` is `false`). A missing field equals `null`.
//! * **Ordering** (`< <= > >=`): numbers compare numerically, strings
//!   lexicographically by Unicode code point. If either side is `null`
//!   (including a missing field) the result is `false`. Any other combination
//!   (`'a' < 1`, booleans, arrays, objects) is an error naming the types.
//! * **Logic** (`and`, `or`, `not`): operands must be booleans or `null`;
//!   `null` counts as `false`; anything else is an error. The result is always
//!   a boolean. `and`/`or` short-circuit left to right, so
//!   `false and 'x'` is `false` without error. `not null` is `true`.
//!
//! [`Expr::eval`] returns the resulting JSON value; [`Expr::eval_bool`] treats
//! the expression as a filter: `true` passes, `false` and `null` do not, and
//! any other result type is an error.
//!
//! # Limits
//!
//! Sources longer than 64 KiB (65 536 bytes) are rejected. Nesting deeper
//! than 64 levels is rejected, where each parenthesised group, function call
//! and prefix operator (`not`, `!`, unary `-`) opens one level; long flat
//! chains such as `a or b or c ...` or `x + y + z ...` do not nest.
//!
//! # Errors
//!
//! [`ParseError`] carries a message and a 1-based column, counted in
//! characters from the start of the source (newlines count as one
//! character). [`EvalError`] messages start with the expression text:
//! ``in `price * qty`: cannot apply `*` to string and integer``. Expression
//! text longer than 512 characters is shortened in error messages.
//!
//! # Performance
//!
//! Parsing builds a tree once. Evaluation borrows field values from the record
//! and literals from the tree; field lookups, numeric operations,
//! comparisons and logic do not allocate. Allocation happens only for string
//! results that are new (`+` on strings, `lower`, `upper`), for building the
//! final [`serde_json::Value`] in [`Expr::eval`], and on errors.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Number, Value};

/// Maximum accepted source length in bytes.
const MAX_SOURCE_BYTES: usize = 64 * 1024;
/// Maximum nesting depth (parentheses, function calls, prefix operators).
const MAX_DEPTH: usize = 64;
/// Expression text longer than this (in chars) is shortened in error messages.
const MAX_SHOWN_CHARS: usize = 512;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// A parsed expression, ready to be evaluated against many records.
///
/// Cheap to share between threads (`Send + Sync`); cloning copies the tree.
#[derive(Clone)]
pub struct Expr {
    src: String,
    root: Node,
    fields: Vec<String>,
}

/// An error found while parsing an expression.
///
/// Displays as ``{message} at column {column} in `{expression}` ``.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at column {column} in `{expr_text}`")]
pub struct ParseError {
    /// What is wrong, e.g. ``expected expression, found `)` ``.
    pub message: String,
    /// 1-based column of the offending character, counted in characters from
    /// the start of the source.
    pub column: usize,
    /// The expression text (shortened if very long), for display.
    expr_text: String,
}

/// An error raised while evaluating an expression against a record.
///
/// The message includes the expression text, e.g.
/// ``in `price * qty`: cannot apply `*` to string and integer``.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    /// Full message, starting with ``in `{expression}`: ``.
    pub message: String,
}

impl Expr {
    /// Parses `src` into an expression.
    ///
    /// Fails with a [`ParseError`] (message and column) on any syntax error,
    /// unknown function or wrong arity, integer or float literal out of range,
    /// nesting deeper than 64 levels, or a source longer than 64 KiB.
    pub fn parse(src: &str) -> Result<Expr, ParseError> {
        let perr = |column: usize, message: String| ParseError {
            message,
            column,
            expr_text: shown(src),
        };
        if src.len() > MAX_SOURCE_BYTES {
            return Err(perr(
                1,
                format!(
                    "expression is too long ({} bytes; the limit is {MAX_SOURCE_BYTES})",
                    src.len()
                ),
            ));
        }
        let chars: Vec<char> = src.chars().collect();
        let toks = lex(&chars).map_err(|f| perr(f.pos + 1, f.msg))?;
        let mut p = Parser {
            toks: &toks,
            chars: &chars,
            pos: 0,
            depth: 0,
            fields: Vec::new(),
            seen: HashSet::new(),
        };
        let root = p.parse_top().map_err(|f| perr(f.pos + 1, f.msg))?;
        Ok(Expr {
            src: src.to_owned(),
            root,
            fields: p.fields,
        })
    }

    /// Evaluates the expression against `record` and returns the result as an
    /// owned JSON value.
    ///
    /// Fails with an [`EvalError`] on type errors, integer overflow, non-finite
    /// float results, and division or remainder by zero.
    pub fn eval(&self, record: &Map<String, Value>) -> Result<Value, EvalError> {
        let v = eval_node(&self.root, record).map_err(|m| self.error(m))?;
        to_json(v).map_err(|m| self.error(m))
    }

    /// Evaluates the expression as a filter predicate.
    ///
    /// Returns `true` only when the result is boolean `true`; `false` and
    /// `null` give `false`; any other result type is an [`EvalError`]. Does not
    /// allocate unless the expression itself builds strings (or fails).
    pub fn eval_bool(&self, record: &Map<String, Value>) -> Result<bool, EvalError> {
        match eval_node(&self.root, record) {
            Ok(V::Bool(b)) => Ok(b),
            Ok(V::Null) => Ok(false),
            Ok(other) => Err(self.error(format!(
                "expected a boolean result, got {}",
                other.type_name()
            ))),
            Err(m) => Err(self.error(m)),
        }
    }

    /// Top-level field names referenced by the expression (the first segment
    /// of each path), without duplicates, in order of first appearance.
    pub fn fields(&self) -> Vec<String> {
        self.fields.clone()
    }

    /// The source text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.src
    }

    fn error(&self, msg: String) -> EvalError {
        EvalError {
            message: format!("in `{}`: {msg}", shown(&self.src)),
        }
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expr")
            .field("source", &self.src)
            .field("tree", &self.root)
            .finish()
    }
}

/// Expression text for error messages, shortened if very long.
fn shown(src: &str) -> String {
    match src.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((i, _)) => format!("{}…", &src[..i]),
        None => src.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Tree
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Node {
    Lit(Lit),
    /// Non-empty path of field names.
    Field(Box<[Box<str>]>),
    Neg(Box<Node>),
    Not(Box<Node>),
    /// Two or more operands.
    And(Vec<Node>),
    /// Two or more operands.
    Or(Vec<Node>),
    Cmp(CmpOp, Box<(Node, Node)>),
    /// Left fold: `first op1 n1 op2 n2 ...` (flat, so long chains don't nest).
    Arith(Box<Node>, Vec<(ArithOp, Node)>),
    Call(Func, Vec<Node>),
}

#[derive(Clone, Debug)]
enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Abs,
    Lower,
    Upper,
    Len,
    Coalesce,
}

impl Func {
    fn lookup(name: &str) -> Option<Func> {
        const ALL: [(&str, Func); 5] = [
            ("abs", Func::Abs),
            ("lower", Func::Lower),
            ("upper", Func::Upper),
            ("len", Func::Len),
            ("coalesce", Func::Coalesce),
        ];
        ALL.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f)| f)
    }

    fn name(self) -> &'static str {
        match self {
            Func::Abs => "abs",
            Func::Lower => "lower",
            Func::Upper => "upper",
            Func::Len => "len",
            Func::Coalesce => "coalesce",
        }
    }
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

/// An error at a char index (0-based).
struct Fail {
    pos: usize,
    msg: String,
}

fn fail(pos: usize, msg: impl Into<String>) -> Fail {
    Fail {
        pos,
        msg: msg.into(),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// Unsigned integer literal; range against `i64` is checked by the parser.
    Int(u64),
    Float(f64),
    Str(String),
    /// Identifier or keyword, as written.
    Word(String),
    /// Backtick-quoted name.
    Quoted(String),
    AndAnd,
    OrOr,
    Bang,
    EqEq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    LParen,
    RParen,
    Comma,
    Dot,
    Eof,
}

struct Token {
    tok: Tok,
    /// Char index of the first char.
    start: usize,
    /// Char index one past the last char.
    end: usize,
}

static EOF_TOKEN: Token = Token {
    tok: Tok::Eof,
    start: 0,
    end: 0,
};

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn lex(c: &[char]) -> Result<Vec<Token>, Fail> {
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(&ch) = c.get(i) {
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let next = c.get(i + 1).copied();
        let (tok, len) = match ch {
            '0'..='9' => {
                let (tok, end) = lex_number(c, i)?;
                (tok, end - i)
            }
            c0 if is_ident_start(c0) => {
                let len = c[i..].iter().take_while(|&&x| is_ident_char(x)).count();
                (Tok::Word(c[i..i + len].iter().collect()), len)
            }
            '\'' | '"' => {
                let (s, end) = lex_quoted(c, i, "unterminated string literal")?;
                (Tok::Str(s), end - i)
            }
            '`' => {
                let (s, end) = lex_quoted(c, i, "unterminated quoted field name")?;
                (Tok::Quoted(s), end - i)
            }
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '.' => (Tok::Dot, 1),
            '+' => (Tok::Plus, 1),
            '-' => (Tok::Minus, 1),
            '*' => (Tok::Star, 1),
            '/' => (Tok::Slash, 1),
            '%' => (Tok::Percent, 1),
            '=' if next == Some('=') => (Tok::EqEq, 2),
            '=' => return Err(fail(i, "unexpected `=`; use `==` to compare")),
            '!' if next == Some('=') => (Tok::Ne, 2),
            '!' => (Tok::Bang, 1),
            '<' if next == Some('=') => (Tok::Le, 2),
            '<' => (Tok::Lt, 1),
            '>' if next == Some('=') => (Tok::Ge, 2),
            '>' => (Tok::Gt, 1),
            '&' if next == Some('&') => (Tok::AndAnd, 2),
            '&' => return Err(fail(i, "unexpected `&`; use `&&` or `and`")),
            '|' if next == Some('|') => (Tok::OrOr, 2),
            '|' => return Err(fail(i, "unexpected `|`; use `||` or `or`")),
            other => return Err(fail(i, format!("unexpected character `{other}`"))),
        };
        i += len;
        toks.push(Token { tok, start, end: i });
    }
    toks.push(Token {
        tok: Tok::Eof,
        start: c.len(),
        end: c.len(),
    });
    Ok(toks)
}

/// Lexes a number starting at `start` (a digit). Returns the token and the
/// index one past its end.
fn lex_number(c: &[char], start: usize) -> Result<(Tok, usize), Fail> {
    let is_digit = |i: usize| c.get(i).is_some_and(char::is_ascii_digit);
    let mut j = start;
    while is_digit(j) {
        j += 1;
    }
    let mut is_float = false;
    if c.get(j) == Some(&'.') && is_digit(j + 1) {
        is_float = true;
        j += 1;
        while is_digit(j) {
            j += 1;
        }
    }
    if matches!(c.get(j), Some('e' | 'E')) {
        let mut k = j + 1;
        if matches!(c.get(k), Some('+' | '-')) {
            k += 1;
        }
        if is_digit(k) {
            is_float = true;
            j = k;
            while is_digit(j) {
                j += 1;
            }
        }
    }
    let bad_dot = !is_float && c.get(j) == Some(&'.');
    if bad_dot || c.get(j).is_some_and(|&x| is_ident_char(x)) {
        // `12abc`, `1e`, `1.` and `1.x`.
        let mut end = j + usize::from(bad_dot);
        while c.get(end).is_some_and(|&x| is_ident_char(x)) {
            end += 1;
        }
        let text: String = c.get(start..end).unwrap_or(&[]).iter().collect();
        return Err(fail(
            start,
            format!("invalid number literal `{}`", abbreviate(&text)),
        ));
    }
    let text: String = c[start..j].iter().collect();
    if is_float {
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok((Tok::Float(f), j)),
            _ => Err(fail(
                start,
                format!("float literal `{text}` is out of range"),
            )),
        }
    } else {
        match text.parse::<u64>() {
            Ok(u) => Ok((Tok::Int(u), j)),
            Err(_) => Err(fail(
                start,
                format!("integer literal `{}` is out of range", abbreviate(&text)),
            )),
        }
    }
}

/// Lexes a string or quoted name starting at the opening quote `c[start]`.
/// Returns the unescaped text and the index one past the closing quote.
fn lex_quoted(c: &[char], start: usize, unterminated: &str) -> Result<(String, usize), Fail> {
    let quote = c.get(start).copied().unwrap_or('"');
    let mut s = String::new();
    let mut j = start + 1;
    loop {
        match c.get(j) {
            None => return Err(fail(start, unterminated)),
            Some(&ch) if ch == quote => return Ok((s, j + 1)),
            Some('\\') => {
                let esc = match c.get(j + 1) {
                    Some('\\') => '\\',
                    Some('\'') => '\'',
                    Some('"') => '"',
                    Some('`') => '`',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some(other) => {
                        return Err(fail(j, format!("unknown escape sequence `\\{other}`")))
                    }
                    None => return Err(fail(start, unterminated)),
                };
                s.push(esc);
                j += 2;
            }
            Some(&ch) => {
                s.push(ch);
                j += 1;
            }
        }
    }
}

/// Shortens long token text for messages.
fn abbreviate(text: &str) -> String {
    const MAX: usize = 24;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

struct Parser<'t> {
    toks: &'t [Token],
    chars: &'t [char],
    pos: usize,
    depth: usize,
    fields: Vec<String>,
    seen: HashSet<String>,
}

impl<'t> Parser<'t> {
    fn tok(&self) -> &'t Token {
        self.toks.get(self.pos).unwrap_or(&EOF_TOKEN)
    }

    fn peek_next(&self) -> &'t Tok {
        self.toks.get(self.pos + 1).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn advance(&mut self) {
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
    }

    /// Describes the current token for error messages.
    fn describe(&self, t: &Token) -> String {
        if t.tok == Tok::Eof {
            return "end of input".to_owned();
        }
        let text: String = self
            .chars
            .get(t.start..t.end)
            .unwrap_or(&[])
            .iter()
            .collect();
        format!("`{}`", abbreviate(&text))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok().tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    fn enter(&mut self, pos: usize) -> Result<(), Fail> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(fail(
                pos,
                format!("expression is nested too deeply (the limit is {MAX_DEPTH} levels)"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn parse_top(&mut self) -> Result<Node, Fail> {
        if self.tok().tok == Tok::Eof {
            return Err(fail(0, "empty expression"));
        }
        let node = self.parse_or()?;
        let t = self.tok();
        if t.tok != Tok::Eof {
            let msg = if self.cmp_op().is_some() {
                "comparison operators cannot be chained; use parentheses".to_owned()
            } else {
                format!(
                    "unexpected {}; expected an operator or end of input",
                    self.describe(t)
                )
            };
            return Err(fail(t.start, msg));
        }
        Ok(node)
    }

    fn at_or(&self) -> bool {
        self.tok().tok == Tok::OrOr || self.is_kw("or")
    }

    fn at_and(&self) -> bool {
        self.tok().tok == Tok::AndAnd || self.is_kw("and")
    }

    fn at_not(&self) -> bool {
        self.tok().tok == Tok::Bang || self.is_kw("not")
    }

    fn parse_or(&mut self) -> Result<Node, Fail> {
        let first = self.parse_and()?;
        if !self.at_or() {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.at_or() {
            self.advance();
            items.push(self.parse_and()?);
        }
        Ok(Node::Or(items))
    }

    fn parse_and(&mut self) -> Result<Node, Fail> {
        let first = self.parse_not()?;
        if !self.at_and() {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.at_and() {
            self.advance();
            items.push(self.parse_not()?);
        }
        Ok(Node::And(items))
    }

    fn parse_not(&mut self) -> Result<Node, Fail> {
        if !self.at_not() {
            return self.parse_cmp();
        }
        let start = self.tok().start;
        self.advance();
        self.enter(start)?;
        let inner = self.parse_not()?;
        self.leave();
        Ok(Node::Not(Box::new(inner)))
    }

    fn cmp_op(&self) -> Option<CmpOp> {
        Some(match self.tok().tok {
            Tok::EqEq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Lt => CmpOp::Lt,
            Tok::Le => CmpOp::Le,
            Tok::Gt => CmpOp::Gt,
            Tok::Ge => CmpOp::Ge,
            _ => return None,
        })
    }

    fn parse_cmp(&mut self) -> Result<Node, Fail> {
        let lhs = self.parse_sum()?;
        let Some(op) = self.cmp_op() else {
            return Ok(lhs);
        };
        self.advance();
        let rhs = self.parse_sum()?;
        if self.cmp_op().is_some() {
            return Err(fail(
                self.tok().start,
                "comparison operators cannot be chained; use parentheses",
            ));
        }
        Ok(Node::Cmp(op, Box::new((lhs, rhs))))
    }

    fn parse_sum(&mut self) -> Result<Node, Fail> {
        let first = self.parse_product()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.tok().tok {
                Tok::Plus => ArithOp::Add,
                Tok::Minus => ArithOp::Sub,
                _ => break,
            };
            self.advance();
            rest.push((op, self.parse_product()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Node::Arith(Box::new(first), rest)
        })
    }

    fn parse_product(&mut self) -> Result<Node, Fail> {
        let first = self.parse_unary()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.tok().tok {
                Tok::Star => ArithOp::Mul,
                Tok::Slash => ArithOp::Div,
                Tok::Percent => ArithOp::Rem,
                _ => break,
            };
            self.advance();
            rest.push((op, self.parse_unary()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Node::Arith(Box::new(first), rest)
        })
    }

    fn parse_unary(&mut self) -> Result<Node, Fail> {
        if self.tok().tok != Tok::Minus {
            return self.parse_primary();
        }
        let start = self.tok().start;
        self.advance();
        self.enter(start)?;
        let t = self.tok();
        let node = match t.tok {
            // Fold negative literals; this also admits `-9223372036854775808`.
            Tok::Int(u) => match 0i64.checked_sub_unsigned(u) {
                Some(i) => {
                    self.advance();
                    Node::Lit(Lit::Int(i))
                }
                None => return Err(self.int_out_of_range(t)),
            },
            Tok::Float(f) => {
                self.advance();
                Node::Lit(Lit::Float(-f))
            }
            _ => Node::Neg(Box::new(self.parse_unary()?)),
        };
        self.leave();
        Ok(node)
    }

    fn int_out_of_range(&self, t: &Token) -> Fail {
        fail(
            t.start,
            format!("integer literal {} is out of range", self.describe(t)),
        )
    }

    fn parse_primary(&mut self) -> Result<Node, Fail> {
        let t = self.tok();
        match &t.tok {
            Tok::Int(u) => {
                let i = i64::try_from(*u).map_err(|_| self.int_out_of_range(t))?;
                self.advance();
                Ok(Node::Lit(Lit::Int(i)))
            }
            Tok::Float(f) => {
                self.advance();
                Ok(Node::Lit(Lit::Float(*f)))
            }
            Tok::Str(s) => {
                self.advance();
                Ok(Node::Lit(Lit::Str(s.as_str().into())))
            }
            Tok::Word(w) => {
                let lit = |kw: &str| w.eq_ignore_ascii_case(kw);
                if lit("true") || lit("false") || lit("null") {
                    self.advance();
                    return Ok(Node::Lit(if lit("null") {
                        Lit::Null
                    } else {
                        Lit::Bool(lit("true"))
                    }));
                }
                if lit("and") || lit("or") || lit("not") {
                    let hint = if lit("not") {
                        "; put `not ...` in parentheses"
                    } else {
                        ""
                    };
                    return Err(fail(
                        t.start,
                        format!("expected expression, found {}{hint}", self.describe(t)),
                    ));
                }
                if *self.peek_next() == Tok::LParen {
                    return self.parse_call(t, w);
                }
                self.advance();
                self.parse_path(w)
            }
            Tok::Quoted(name) => {
                self.advance();
                self.parse_path(name)
            }
            Tok::LParen => {
                self.advance();
                self.enter(t.start)?;
                let inner = self.parse_or()?;
                let close = self.tok();
                if close.tok != Tok::RParen {
                    return Err(fail(
                        close.start,
                        format!(
                            "expected `)` to close `(` at column {}, found {}",
                            t.start + 1,
                            self.describe(close)
                        ),
                    ));
                }
                self.advance();
                self.leave();
                Ok(inner)
            }
            Tok::Bang => Err(fail(
                t.start,
                "expected expression, found `!`; put `!...` in parentheses",
            )),
            _ => Err(fail(
                t.start,
                format!("expected expression, found {}", self.describe(t)),
            )),
        }
    }

    /// Parses the rest of a path whose first segment (already consumed) is
    /// `first`.
    fn parse_path(&mut self, first: &str) -> Result<Node, Fail> {
        if !self.seen.contains(first) {
            self.seen.insert(first.to_owned());
            self.fields.push(first.to_owned());
        }
        let mut segs: Vec<Box<str>> = vec![first.into()];
        while self.tok().tok == Tok::Dot {
            self.advance();
            let t = self.tok();
            match &t.tok {
                Tok::Word(name) | Tok::Quoted(name) => {
                    segs.push(name.as_str().into());
                    self.advance();
                }
                _ => {
                    return Err(fail(
                        t.start,
                        format!(
                            "expected a field name after `.`, found {}",
                            self.describe(t)
                        ),
                    ))
                }
            }
        }
        Ok(Node::Field(segs.into_boxed_slice()))
    }

    /// Parses a call; the current token is the function name `name`, followed
    /// by `(`.
    fn parse_call(&mut self, name_tok: &Token, name: &str) -> Result<Node, Fail> {
        let Some(func) = Func::lookup(name) else {
            return Err(fail(
                name_tok.start,
                format!(
                    "unknown function `{}` (known: abs, coalesce, len, lower, upper)",
                    abbreviate(name)
                ),
            ));
        };
        self.advance(); // name
        let open = self.tok();
        self.advance(); // (
        self.enter(open.start)?;
        let mut args = Vec::new();
        if self.tok().tok == Tok::RParen {
            self.advance();
        } else {
            loop {
                args.push(self.parse_or()?);
                let t = self.tok();
                match t.tok {
                    Tok::Comma => self.advance(),
                    Tok::RParen => {
                        self.advance();
                        break;
                    }
                    _ => {
                        return Err(fail(
                            t.start,
                            format!(
                                "expected `,` or `)` in call to `{}`, found {}",
                                func.name(),
                                self.describe(t)
                            ),
                        ))
                    }
                }
            }
        }
        self.leave();
        let ok = match func {
            Func::Coalesce => !args.is_empty(),
            _ => args.len() == 1,
        };
        if !ok {
            let expected = match func {
                Func::Coalesce => "at least 1 argument",
                _ => "1 argument",
            };
            return Err(fail(
                name_tok.start,
                format!(
                    "function `{}` takes {expected}, got {}",
                    func.name(),
                    args.len()
                ),
            ));
        }
        Ok(Node::Call(func, args))
    }
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

/// Internal value: borrows from the record and the tree where it can.
///
/// Invariant: `Json` holds only arrays, objects, and numbers that are neither
/// `i64` nor `f64` (i.e. integers above `i64::MAX`).
#[derive(Debug)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Json(&'a Value),
}

impl V<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            V::Null => "null",
            V::Bool(_) => "boolean",
            V::Int(_) => "integer",
            V::Float(_) => "float",
            V::Str(_) => "string",
            V::Json(j) => json_type_name(j),
        }
    }
}

fn json_type_name(j: &Value) -> &'static str {
    match j {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Error message from evaluation (the expression text is added by the caller).
type EvalResult<T> = Result<T, String>;

fn from_json(v: &Value) -> V<'_> {
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                V::Int(i)
            } else if n.is_f64() {
                n.as_f64().map_or(V::Json(v), V::Float)
            } else {
                V::Json(v)
            }
        }
        Value::String(s) => V::Str(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => V::Json(v),
    }
}

fn to_json(v: V<'_>) -> EvalResult<Value> {
    Ok(match v {
        V::Null => Value::Null,
        V::Bool(b) => Value::Bool(b),
        V::Int(i) => Value::Number(i.into()),
        V::Float(f) => Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| "result is not a finite number".to_owned())?,
        V::Str(s) => Value::String(s.into_owned()),
        V::Json(j) => j.clone(),
    })
}

fn lookup<'a>(path: &[Box<str>], record: &'a Map<String, Value>) -> V<'a> {
    let Some((first, rest)) = path.split_first() else {
        return V::Null;
    };
    let Some(mut v) = record.get(&**first) else {
        return V::Null;
    };
    for seg in rest {
        match v {
            Value::Object(m) => match m.get(&**seg) {
                Some(next) => v = next,
                None => return V::Null,
            },
            _ => return V::Null,
        }
    }
    from_json(v)
}

fn lit_value(lit: &Lit) -> V<'_> {
    match lit {
        Lit::Null => V::Null,
        Lit::Bool(b) => V::Bool(*b),
        Lit::Int(i) => V::Int(*i),
        Lit::Float(f) => V::Float(*f),
        Lit::Str(s) => V::Str(Cow::Borrowed(s)),
    }
}

/// Evaluates an operand: leaves (literals and fields, by far the most common
/// operands) inline, anything else through [`eval_node`].
#[inline(always)]
fn operand<'a>(node: &'a Node, rec: &'a Map<String, Value>) -> EvalResult<V<'a>> {
    match node {
        Node::Lit(lit) => Ok(lit_value(lit)),
        Node::Field(path) => Ok(lookup(path, rec)),
        _ => eval_node(node, rec),
    }
}

fn eval_node<'a>(node: &'a Node, rec: &'a Map<String, Value>) -> EvalResult<V<'a>> {
    match node {
        Node::Lit(lit) => Ok(lit_value(lit)),
        Node::Field(path) => Ok(lookup(path, rec)),
        Node::Neg(inner) => negate(eval_node(inner, rec)?),
        Node::Not(inner) => match eval_node(inner, rec)? {
            V::Bool(b) => Ok(V::Bool(!b)),
            V::Null => Ok(V::Bool(true)),
            other => Err(format!(
                "cannot apply `not` to {} (expected boolean or null)",
                other.type_name()
            )),
        },
        Node::And(items) => {
            for item in items {
                if !truthy("and", operand(item, rec)?)? {
                    return Ok(V::Bool(false));
                }
            }
            Ok(V::Bool(true))
        }
        Node::Or(items) => {
            for item in items {
                if truthy("or", operand(item, rec)?)? {
                    return Ok(V::Bool(true));
                }
            }
            Ok(V::Bool(false))
        }
        Node::Cmp(op, operands) => {
            let l = operand(&operands.0, rec)?;
            let r = operand(&operands.1, rec)?;
            compare(*op, &l, &r).map(V::Bool)
        }
        Node::Arith(first, rest) => {
            let mut acc = operand(first, rec)?;
            for (op, node) in rest {
                let r = operand(node, rec)?;
                acc = arith(*op, acc, r)?;
            }
            Ok(acc)
        }
        Node::Call(func, args) => call(*func, args, rec),
    }
}

#[inline]
fn truthy(op: &str, v: V<'_>) -> EvalResult<bool> {
    match v {
        V::Bool(b) => Ok(b),
        V::Null => Ok(false),
        other => Err(format!(
            "cannot apply `{op}` to {} (expected boolean or null)",
            other.type_name()
        )),
    }
}

/// A number: integers keep full precision (`U` only for values above
/// `i64::MAX`); all values are expected to be finite.
#[derive(Clone, Copy, Debug)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl Num {
    fn int(self) -> Option<i128> {
        match self {
            Num::I(i) => Some(i128::from(i)),
            Num::U(u) => Some(i128::from(u)),
            Num::F(_) => None,
        }
    }

    fn float(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::U(u) => u as f64,
            Num::F(f) => f,
        }
    }
}

fn num(v: &V<'_>) -> Option<Num> {
    match v {
        V::Int(i) => Some(Num::I(*i)),
        V::Float(f) => Some(Num::F(*f)),
        V::Json(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Some(Num::I(i))
            } else if let Some(u) = n.as_u64() {
                Some(Num::U(u))
            } else {
                n.as_f64().map(Num::F)
            }
        }
        _ => None,
    }
}

/// Exact numeric comparison (no rounding of integers to floats).
fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a.int(), b.int()) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        (Some(x), None) => cmp_int_float(x, b.float()),
        (None, Some(y)) => cmp_int_float(y, a.float()).map(Ordering::reverse),
        (None, None) => a.float().partial_cmp(&b.float()),
    }
}

/// Compares an integer in `[-2^63, 2^64)` with a float, exactly.
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_64 {
        return Some(Ordering::Less);
    }
    if f < -TWO_64 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    // |t| <= 2^64 and integral, so the conversion is exact.
    let ti = t as i128;
    match i.cmp(&ti) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - t)),
        o => Some(o),
    }
}

fn values_equal(l: &V<'_>, r: &V<'_>) -> bool {
    match (num(l), num(r)) {
        (Some(a), Some(b)) => return num_cmp(a, b) == Some(Ordering::Equal),
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (l, r) {
        (V::Null, V::Null) => true,
        (V::Bool(a), V::Bool(b)) => a == b,
        (V::Str(a), V::Str(b)) => a == b,
        (V::Json(a), V::Json(b)) => a == b,
        _ => false,
    }
}

fn compare(op: CmpOp, l: &V<'_>, r: &V<'_>) -> EvalResult<bool> {
    let ord = match op {
        CmpOp::Eq => return Ok(values_equal(l, r)),
        CmpOp::Ne => return Ok(!values_equal(l, r)),
        _ if matches!(l, V::Null) || matches!(r, V::Null) => return Ok(false),
        _ => match (num(l), num(r), l, r) {
            (Some(a), Some(b), _, _) => num_cmp(a, b),
            (_, _, V::Str(a), V::Str(b)) => Some(a.as_ref().cmp(b.as_ref())),
            _ => {
                return Err(format!(
                    "cannot compare {} and {} with `{}`",
                    l.type_name(),
                    r.type_name(),
                    op.symbol()
                ))
            }
        },
    };
    let Some(ord) = ord else {
        return Ok(false);
    };
    Ok(match op {
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
        CmpOp::Eq | CmpOp::Ne => false,
    })
}

fn overflow(op: ArithOp) -> String {
    format!("integer overflow in `{}`", op.symbol())
}

fn arith<'a>(op: ArithOp, l: V<'a>, r: V<'a>) -> EvalResult<V<'a>> {
    if matches!(l, V::Null) || matches!(r, V::Null) {
        return Ok(V::Null);
    }
    if let (Some(a), Some(b)) = (num(&l), num(&r)) {
        return match (a, b) {
            (Num::I(x), Num::I(y)) => int_arith(op, x, y),
            _ => float_arith(op, a.float(), b.float()),
        };
    }
    match (l, r) {
        (V::Str(a), V::Str(b)) if op == ArithOp::Add => {
            if b.is_empty() {
                return Ok(V::Str(a));
            }
            let mut s = a.into_owned();
            s.push_str(&b);
            Ok(V::Str(Cow::Owned(s)))
        }
        (l, r) => Err(format!(
            "cannot apply `{}` to {} and {}",
            op.symbol(),
            l.type_name(),
            r.type_name()
        )),
    }
}

fn int_arith(op: ArithOp, x: i64, y: i64) -> EvalResult<V<'static>> {
    let res = match op {
        ArithOp::Add => x.checked_add(y),
        ArithOp::Sub => x.checked_sub(y),
        ArithOp::Mul => x.checked_mul(y),
        ArithOp::Div => {
            if y == 0 {
                return Err("division by zero".to_owned());
            }
            match x.checked_rem(y) {
                Some(0) => x.checked_div(y),
                Some(_) => return float_arith(op, x as f64, y as f64),
                None => None,
            }
        }
        ArithOp::Rem => {
            if y == 0 {
                return Err("modulo by zero".to_owned());
            }
            x.checked_rem(y)
        }
    };
    res.map(V::Int).ok_or_else(|| overflow(op))
}

fn float_arith(op: ArithOp, x: f64, y: f64) -> EvalResult<V<'static>> {
    let res = match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div if y == 0.0 => return Err("division by zero".to_owned()),
        ArithOp::Div => x / y,
        ArithOp::Rem if y == 0.0 => return Err("modulo by zero".to_owned()),
        ArithOp::Rem => x % y,
    };
    if res.is_finite() {
        Ok(V::Float(res))
    } else {
        Err(format!(
            "float overflow in `{}`: result is not finite",
            op.symbol()
        ))
    }
}

fn negate(v: V<'_>) -> EvalResult<V<'_>> {
    match v {
        V::Null => Ok(V::Null),
        V::Int(i) => i
            .checked_neg()
            .map(V::Int)
            .ok_or_else(|| "integer overflow in unary `-`".to_owned()),
        V::Float(f) => Ok(V::Float(-f)),
        other => match num(&other) {
            Some(n) => Ok(V::Float(-n.float())),
            None => Err(format!("cannot apply unary `-` to {}", other.type_name())),
        },
    }
}

fn call<'a>(func: Func, args: &'a [Node], rec: &'a Map<String, Value>) -> EvalResult<V<'a>> {
    if func == Func::Coalesce {
        for arg in args {
            let v = eval_node(arg, rec)?;
            if !matches!(v, V::Null) {
                return Ok(v);
            }
        }
        return Ok(V::Null);
    }
    let Some(arg) = args.first() else {
        return Ok(V::Null);
    };
    let v = eval_node(arg, rec)?;
    let expected = match (func, v) {
        (_, V::Null) => return Ok(V::Null),
        (Func::Abs, v) => match num(&v) {
            Some(Num::I(i)) => {
                return i
                    .checked_abs()
                    .map(V::Int)
                    .ok_or_else(|| "integer overflow in `abs`".to_owned())
            }
            Some(Num::F(f)) => return Ok(V::Float(f.abs())),
            Some(Num::U(_)) => return Ok(v),
            None => ("a number", v),
        },
        (Func::Lower, V::Str(s)) => return Ok(V::Str(to_lower(s))),
        (Func::Upper, V::Str(s)) => return Ok(V::Str(to_upper(s))),
        (Func::Len, V::Str(s)) => return Ok(V::Int(count_to_i64(s.chars().count()))),
        (Func::Len, V::Json(Value::Array(a))) => return Ok(V::Int(count_to_i64(a.len()))),
        (Func::Lower | Func::Upper, v) => ("a string", v),
        (Func::Len | Func::Coalesce, v) => ("a string or array", v),
    };
    Err(format!(
        "`{}` expects {}, got {}",
        func.name(),
        expected.0,
        expected.1.type_name()
    ))
}

fn count_to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_lower(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.bytes().any(|b| !b.is_ascii() || b.is_ascii_uppercase()) {
        Cow::Owned(s.to_lowercase())
    } else {
        s
    }
}

fn to_upper(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.bytes().any(|b| !b.is_ascii() || b.is_ascii_lowercase()) {
        Cow::Owned(s.to_uppercase())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn sample() -> Map<String, Value> {
        rec(json!({
            "i": 7, "j": -3, "z": 0, "f": 2.5, "s": "abc", "t": "ABC", "e": "",
            "b": true, "n": null, "arr": [1, 2, 3], "obj": {"x": 1, "y": {"z": "deep"}},
            "max": i64::MAX, "min": i64::MIN, "big": u64::MAX, "weird name": 42,
            "and": "kw", "uni": "ÉtÉ"
        }))
    }

    /// Parses and evaluates against [`sample`].
    fn ev(src: &str) -> Value {
        let e = Expr::parse(src).unwrap_or_else(|e| panic!("parse `{src}`: {e}"));
        e.eval(&sample())
            .unwrap_or_else(|e| panic!("eval `{src}`: {e}"))
    }

    /// Evaluation error message (without the `in `...`: ` prefix).
    fn ev_err(src: &str) -> String {
        let e = Expr::parse(src).unwrap_or_else(|e| panic!("parse `{src}`: {e}"));
        let err = e.eval(&sample()).expect_err(src);
        let prefix = format!("in `{src}`: ");
        assert!(err.message.starts_with(&prefix), "{}", err.message);
        err.message[prefix.len()..].to_owned()
    }

    fn perr(src: &str) -> (String, usize) {
        let e = Expr::parse(src).expect_err(src);
        (e.message, e.column)
    }

    // ---- literals ----

    #[test]
    fn integer_and_float_literals() {
        assert_eq!(ev("42"), json!(42));
        assert_eq!(ev("0"), json!(0));
        assert_eq!(ev("007"), json!(7));
        assert_eq!(ev("9223372036854775807"), json!(i64::MAX));
        assert_eq!(ev("-9223372036854775808"), json!(i64::MIN));
        assert_eq!(ev("1.5"), json!(1.5));
        assert_eq!(ev("1e3"), json!(1000.0));
        assert_eq!(ev("2.5E-1"), json!(0.25));
        assert_eq!(ev("1e+2"), json!(100.0));
        assert_eq!(ev("-1.5"), json!(-1.5));
    }

    #[test]
    fn string_literals_and_escapes() {
        assert_eq!(ev("'abc'"), json!("abc"));
        assert_eq!(ev("\"abc\""), json!("abc"));
        assert_eq!(ev("''"), json!(""));
        assert_eq!(ev(r#"'it\'s'"#), json!("it's"));
        assert_eq!(ev(r#""say \"hi\"""#), json!("say \"hi\""));
        assert_eq!(ev(r#""it's""#), json!("it's"));
        assert_eq!(ev(r"'a\\b\nc\td\re\`'"), json!("a\\b\nc\td\re`"));
        assert_eq!(ev("'héllo ✓'"), json!("héllo ✓"));
    }

    #[test]
    fn keyword_literals_case_insensitive() {
        assert_eq!(ev("true"), json!(true));
        assert_eq!(ev("TRUE"), json!(true));
        assert_eq!(ev("False"), json!(false));
        assert_eq!(ev("null"), Value::Null);
        assert_eq!(ev("NULL"), Value::Null);
    }

    // ---- fields ----

    #[test]
    fn field_references() {
        assert_eq!(ev("i"), json!(7));
        assert_eq!(ev("s"), json!("abc"));
        assert_eq!(ev("arr"), json!([1, 2, 3]));
        assert_eq!(ev("obj"), json!({"x": 1, "y": {"z": "deep"}}));
        assert_eq!(ev("obj.x"), json!(1));
        assert_eq!(ev("obj.y.z"), json!("deep"));
        assert_eq!(ev("obj . y . z"), json!("deep"));
        assert_eq!(ev("`weird name`"), json!(42));
        assert_eq!(ev("`and`"), json!("kw"));
        assert_eq!(ev("obj.`y`.z"), json!("deep"));
        assert_eq!(ev("big"), json!(u64::MAX));
        assert_eq!(ev("n"), Value::Null);
    }

    #[test]
    fn missing_fields_are_null() {
        assert_eq!(ev("nope"), Value::Null);
        assert_eq!(ev("obj.nope"), Value::Null);
        assert_eq!(ev("obj.nope.deeper"), Value::Null);
        assert_eq!(ev("i.x"), Value::Null);
        assert_eq!(ev("s.len"), Value::Null);
        assert_eq!(ev("arr.x"), Value::Null);
        assert_eq!(ev("obj.not"), Value::Null);
        assert_eq!(ev("nope == null"), json!(true));
        assert_eq!(ev("obj.nope == null"), json!(true));
    }

    #[test]
    fn keywords_allowed_after_dot() {
        let e = Expr::parse("a.and.NULL").unwrap();
        let r = rec(json!({"a": {"and": {"NULL": 5}}}));
        assert_eq!(e.eval(&r).unwrap(), json!(5));
    }

    #[test]
    fn fields_list() {
        let e = Expr::parse("b.x + a * `c d`.e - b.y + len(a) + coalesce(zz, a)").unwrap();
        assert_eq!(e.fields(), vec!["b", "a", "c d", "zz"]);
        assert!(Expr::parse("1 + 2").unwrap().fields().is_empty());
        assert_eq!(Expr::parse("len").unwrap().fields(), vec!["len"]);
    }

    #[test]
    fn source_debug_clone_send_sync() {
        fn assert_traits<T: Clone + std::fmt::Debug + Send + Sync>() {}
        assert_traits::<Expr>();
        assert_traits::<ParseError>();
        assert_traits::<EvalError>();
        let e = Expr::parse(" i + 1 ").unwrap();
        assert_eq!(e.source(), " i + 1 ");
        let c = e.clone();
        assert_eq!(c.eval(&sample()).unwrap(), json!(8));
        assert!(format!("{e:?}").contains("i + 1"));
    }

    // ---- arithmetic ----

    #[test]
    fn addition() {
        assert_eq!(ev("1 + 2"), json!(3));
        assert_eq!(ev("i + j"), json!(4));
        assert_eq!(ev("1 + 0.5"), json!(1.5));
        assert_eq!(ev("0.5 + 1"), json!(1.5));
        assert_eq!(ev("f + f"), json!(5.0));
        assert_eq!(ev("s + 'def'"), json!("abcdef"));
        assert_eq!(ev("'' + s"), json!("abc"));
        assert_eq!(ev("s + e"), json!("abc"));
        assert_eq!(ev("1.0 + 1"), json!(2.0));
    }

    #[test]
    fn subtraction_multiplication() {
        assert_eq!(ev("i - 10"), json!(-3));
        assert_eq!(ev("f - 1"), json!(1.5));
        assert_eq!(ev("i * j"), json!(-21));
        assert_eq!(ev("f * 2"), json!(5.0));
        assert_eq!(ev("10 - 2 - 3"), json!(5));
        assert_eq!(ev("2 * 3 * 4"), json!(24));
    }

    #[test]
    fn division() {
        assert_eq!(ev("6 / 3"), json!(2));
        assert_eq!(ev("7 / 2"), json!(3.5));
        assert_eq!(ev("-7 / 2"), json!(-3.5));
        assert_eq!(ev("6.0 / 3"), json!(2.0));
        assert_eq!(ev("f / 2"), json!(1.25));
        assert_eq!(ev("8 / 4 / 2"), json!(1));
        assert_eq!(ev("min / 1"), json!(i64::MIN));
        assert_eq!(ev_err("i / 0"), "division by zero");
        assert_eq!(ev_err("i / z"), "division by zero");
        assert_eq!(ev_err("f / 0"), "division by zero");
        assert_eq!(ev_err("1 / 0.0"), "division by zero");
        assert_eq!(ev_err("min / -1"), "integer overflow in `/`");
    }

    #[test]
    fn remainder() {
        assert_eq!(ev("7 % 3"), json!(1));
        assert_eq!(ev("-7 % 3"), json!(-1));
        assert_eq!(ev("7 % -3"), json!(1));
        assert_eq!(ev("7.5 % 2"), json!(1.5));
        assert_eq!(ev_err("7 % 0"), "modulo by zero");
        assert_eq!(ev_err("7.5 % 0.0"), "modulo by zero");
        assert_eq!(ev_err("min % -1"), "integer overflow in `%`");
    }

    #[test]
    fn integer_overflow() {
        assert_eq!(ev_err("max + 1"), "integer overflow in `+`");
        assert_eq!(ev_err("min - 1"), "integer overflow in `-`");
        assert_eq!(ev_err("max * 2"), "integer overflow in `*`");
        assert_eq!(ev_err("-min"), "integer overflow in unary `-`");
        assert_eq!(ev_err("abs(min)"), "integer overflow in `abs`");
        assert_eq!(ev("max + 1.0"), json!(i64::MAX as f64 + 1.0));
    }

    #[test]
    fn float_overflow() {
        assert_eq!(
            ev_err("1e308 * 10"),
            "float overflow in `*`: result is not finite"
        );
        assert_eq!(
            ev_err("1e308 + 1e308"),
            "float overflow in `+`: result is not finite"
        );
        assert_eq!(
            ev_err("1e308 / 1e-10"),
            "float overflow in `/`: result is not finite"
        );
        assert_eq!(
            ev_err("-1e308 - 1e308"),
            "float overflow in `-`: result is not finite"
        );
    }

    #[test]
    fn arithmetic_with_null() {
        for src in [
            "n + 1",
            "1 + n",
            "n - 1",
            "n * 2",
            "n / 0",
            "n % 0",
            "missing + 1",
            "n + 's'",
            "s + n",
            "n + arr",
            "-n",
            "null * null",
            "1 + null + 's'",
        ] {
            assert_eq!(ev(src), Value::Null, "{src}");
        }
    }

    #[test]
    fn arithmetic_type_errors() {
        assert_eq!(ev_err("s * i"), "cannot apply `*` to string and integer");
        assert_eq!(ev_err("s + 1"), "cannot apply `+` to string and integer");
        assert_eq!(ev_err("1 + s"), "cannot apply `+` to integer and string");
        assert_eq!(ev_err("s - s"), "cannot apply `-` to string and string");
        assert_eq!(ev_err("b + 1"), "cannot apply `+` to boolean and integer");
        assert_eq!(ev_err("arr + arr"), "cannot apply `+` to array and array");
        assert_eq!(ev_err("obj / f"), "cannot apply `/` to object and float");
        assert_eq!(ev_err("s % 2"), "cannot apply `%` to string and integer");
        assert_eq!(ev_err("-s"), "cannot apply unary `-` to string");
        assert_eq!(ev_err("-b"), "cannot apply unary `-` to boolean");
    }

    #[test]
    fn unary_minus() {
        assert_eq!(ev("-i"), json!(-7));
        assert_eq!(ev("--i"), json!(7));
        assert_eq!(ev("- - 3"), json!(3));
        assert_eq!(ev("-f"), json!(-2.5));
        assert_eq!(ev("-(1 + 2)"), json!(-3));
        assert_eq!(ev("-2 * 3"), json!(-6));
        assert_eq!(ev("2 - -3"), json!(5));
        assert_eq!(ev("-big"), json!(-(u64::MAX as f64)));
        assert_eq!(ev("-9223372036854775808 + 1"), json!(i64::MIN + 1));
    }

    #[test]
    fn big_unsigned_fields() {
        assert_eq!(ev("big > max"), json!(true));
        assert_eq!(ev("big == 18446744073709551615.0"), json!(false));
        assert_eq!(ev("big < 18446744073709551616.0"), json!(true));
        assert_eq!(ev("big == big"), json!(true));
        assert_eq!(ev("big + 1"), json!(u64::MAX as f64 + 1.0));
        assert_eq!(ev("abs(big)"), json!(u64::MAX));
    }

    #[test]
    fn precedence() {
        assert_eq!(ev("1 + 2 * 3"), json!(7));
        assert_eq!(ev("(1 + 2) * 3"), json!(9));
        assert_eq!(ev("10 - 4 / 2"), json!(8));
        assert_eq!(ev("1 + 2 == 3"), json!(true));
        assert_eq!(ev("not 1 == 2"), json!(true));
        assert_eq!(ev("true or true and false"), json!(true));
        assert_eq!(ev("(true or true) and false"), json!(false));
        assert_eq!(ev("not false and false"), json!(false));
        assert_eq!(ev("not (false and false)"), json!(true));
        assert_eq!(ev("false or not false"), json!(true));
        assert_eq!(ev("i > 1 && s == 'abc' || false"), json!(true));
        assert_eq!(ev("!b"), json!(false));
        assert_eq!(ev("! i == 7"), json!(false));
        assert_eq!(ev("x == (not b)"), json!(false));
    }

    // ---- comparisons ----

    #[test]
    fn equality() {
        assert_eq!(ev("1 == 1"), json!(true));
        assert_eq!(ev("1 == 1.0"), json!(true));
        assert_eq!(ev("1.0 == 1"), json!(true));
        assert_eq!(ev("1 != 1.5"), json!(true));
        assert_eq!(ev("s == 'abc'"), json!(true));
        assert_eq!(ev("s != 'abc'"), json!(false));
        assert_eq!(ev("s == t"), json!(false));
        assert_eq!(ev("b == true"), json!(true));
        assert_eq!(ev("null == null"), json!(true));
        assert_eq!(ev("n == null"), json!(true));
        assert_eq!(ev("n != null"), json!(false));
        assert_eq!(ev("i == null"), json!(false));
        assert_eq!(ev("i != null"), json!(true));
        assert_eq!(ev("1 == '1'"), json!(false));
        assert_eq!(ev("1 != '1'"), json!(true));
        assert_eq!(ev("b == 1"), json!(false));
        assert_eq!(ev("arr == arr"), json!(true));
        assert_eq!(ev("obj == obj"), json!(true));
        assert_eq!(ev("arr == obj"), json!(false));
        assert_eq!(ev("arr == 's'"), json!(false));
        assert_eq!(ev("obj.y == obj.y"), json!(true));
        assert_eq!(ev("9007199254740993 == 9007199254740992.0"), json!(false));
        assert_eq!(ev("9007199254740992 == 9007199254740992.0"), json!(true));
    }

    #[test]
    fn ordering() {
        assert_eq!(ev("1 < 2"), json!(true));
        assert_eq!(ev("2 < 2"), json!(false));
        assert_eq!(ev("2 <= 2"), json!(true));
        assert_eq!(ev("3 <= 2"), json!(false));
        assert_eq!(ev("3 > 2"), json!(true));
        assert_eq!(ev("2 > 2"), json!(false));
        assert_eq!(ev("2 >= 2"), json!(true));
        assert_eq!(ev("1 >= 2"), json!(false));
        assert_eq!(ev("i > f"), json!(true));
        assert_eq!(ev("2 < 2.5"), json!(true));
        assert_eq!(ev("2.5 > 2"), json!(true));
        assert_eq!(ev("-1 < -0.5"), json!(true));
        assert_eq!(ev("9007199254740993 > 9007199254740992.0"), json!(true));
        assert_eq!(ev("max < 9223372036854775808.0"), json!(true));
        assert_eq!(ev("min >= -9223372036854775808.0"), json!(true));
        assert_eq!(ev("min > -1e300"), json!(true));
        assert_eq!(ev("'abc' < 'abd'"), json!(true));
        assert_eq!(ev("'abc' < 'ab'"), json!(false));
        assert_eq!(ev("'B' < 'a'"), json!(true));
        assert_eq!(ev("s >= 'abc'"), json!(true));
        assert_eq!(ev("'é' > 'z'"), json!(true));
    }

    #[test]
    fn ordering_with_null_is_false() {
        for src in [
            "n < 1",
            "n <= 1",
            "n > 1",
            "n >= 1",
            "1 < n",
            "missing > 0",
            "n < n",
            "s < n",
            "arr < n",
            "n >= 'x'",
        ] {
            assert_eq!(ev(src), json!(false), "{src}");
        }
    }

    #[test]
    fn ordering_type_errors() {
        assert_eq!(
            ev_err("s < 1"),
            "cannot compare string and integer with `<`"
        );
        assert_eq!(
            ev_err("1 <= s"),
            "cannot compare integer and string with `<=`"
        );
        assert_eq!(
            ev_err("b > false"),
            "cannot compare boolean and boolean with `>`"
        );
        assert_eq!(
            ev_err("arr >= arr"),
            "cannot compare array and array with `>=`"
        );
        assert_eq!(
            ev_err("obj < 1"),
            "cannot compare object and integer with `<`"
        );
        assert_eq!(
            ev_err("f < 's'"),
            "cannot compare float and string with `<`"
        );
    }

    // ---- logic ----

    #[test]
    fn and_or_truth_tables() {
        let vals = [("true", Some(true)), ("false", Some(false)), ("null", None)];
        for (a, av) in vals {
            for (b, bv) in vals {
                let (x, y) = (av.unwrap_or(false), bv.unwrap_or(false));
                assert_eq!(ev(&format!("{a} and {b}")), json!(x && y), "{a} and {b}");
                assert_eq!(ev(&format!("{a} && {b}")), json!(x && y));
                assert_eq!(ev(&format!("{a} AND {b}")), json!(x && y));
                assert_eq!(ev(&format!("{a} or {b}")), json!(x || y), "{a} or {b}");
                assert_eq!(ev(&format!("{a} || {b}")), json!(x || y));
                assert_eq!(ev(&format!("{a} Or {b}")), json!(x || y));
            }
        }
        assert_eq!(ev("true and true and true"), json!(true));
        assert_eq!(ev("false or false or true"), json!(true));
    }

    #[test]
    fn not_operator() {
        assert_eq!(ev("not true"), json!(false));
        assert_eq!(ev("NOT false"), json!(true));
        assert_eq!(ev("not null"), json!(true));
        assert_eq!(ev("not missing"), json!(true));
        assert_eq!(ev("!true"), json!(false));
        assert_eq!(ev("not not true"), json!(true));
        assert_eq!(ev("!!b"), json!(true));
        assert_eq!(
            ev_err("not i"),
            "cannot apply `not` to integer (expected boolean or null)"
        );
        assert_eq!(
            ev_err("!s"),
            "cannot apply `not` to string (expected boolean or null)"
        );
    }

    #[test]
    fn logic_short_circuit_and_type_errors() {
        assert_eq!(ev("false and s"), json!(false));
        assert_eq!(ev("null and 1 / 0"), json!(false));
        assert_eq!(ev("true or s"), json!(true));
        assert_eq!(ev("b or max + 1"), json!(true));
        assert_eq!(
            ev_err("true and s"),
            "cannot apply `and` to string (expected boolean or null)"
        );
        assert_eq!(
            ev_err("i and true"),
            "cannot apply `and` to integer (expected boolean or null)"
        );
        assert_eq!(
            ev_err("false or arr"),
            "cannot apply `or` to array (expected boolean or null)"
        );
        assert_eq!(
            ev_err("f || true"),
            "cannot apply `or` to float (expected boolean or null)"
        );
        assert_eq!(ev_err("false or 1 / 0"), "division by zero");
    }

    // ---- functions ----

    #[test]
    fn functions() {
        assert_eq!(ev("abs(j)"), json!(3));
        assert_eq!(ev("abs(i)"), json!(7));
        assert_eq!(ev("abs(-2.5)"), json!(2.5));
        assert_eq!(ev("ABS(-1)"), json!(1));
        assert_eq!(ev("lower(t)"), json!("abc"));
        assert_eq!(ev("lower(s)"), json!("abc"));
        assert_eq!(ev("upper(s)"), json!("ABC"));
        assert_eq!(ev("Upper(t)"), json!("ABC"));
        assert_eq!(ev("lower(uni)"), json!("été"));
        assert_eq!(ev("upper('straße')"), json!("STRASSE"));
        assert_eq!(ev("len(s)"), json!(3));
        assert_eq!(ev("len(uni)"), json!(3));
        assert_eq!(ev("len(e)"), json!(0));
        assert_eq!(ev("len(arr)"), json!(3));
        assert_eq!(ev("len(s + s)"), json!(6));
        assert_eq!(ev("coalesce(n, missing, i, s)"), json!(7));
        assert_eq!(ev("coalesce(n)"), Value::Null);
        assert_eq!(ev("coalesce(s)"), json!("abc"));
        assert_eq!(ev("coalesce(n, obj.y)"), json!({"z": "deep"}));
        assert_eq!(ev("coalesce(i, 1 / 0)"), json!(7));
        assert_eq!(ev("coalesce(missing, 5) + 1"), json!(6));
        assert_eq!(ev("len (s)"), json!(3));
        assert_eq!(ev("len(lower(t)) == 3"), json!(true));
    }

    #[test]
    fn functions_on_null() {
        for src in ["abs(n)", "lower(n)", "upper(missing)", "len(n)"] {
            assert_eq!(ev(src), Value::Null, "{src}");
        }
    }

    #[test]
    fn function_type_errors() {
        assert_eq!(ev_err("abs(s)"), "`abs` expects a number, got string");
        assert_eq!(ev_err("lower(i)"), "`lower` expects a string, got integer");
        assert_eq!(ev_err("upper(arr)"), "`upper` expects a string, got array");
        assert_eq!(
            ev_err("len(i)"),
            "`len` expects a string or array, got integer"
        );
        assert_eq!(
            ev_err("len(obj)"),
            "`len` expects a string or array, got object"
        );
        assert_eq!(ev_err("coalesce(n, 1 / 0)"), "division by zero");
    }

    #[test]
    fn function_parse_errors() {
        assert_eq!(
            perr("foo(1)"),
            (
                "unknown function `foo` (known: abs, coalesce, len, lower, upper)".into(),
                1
            )
        );
        assert_eq!(
            perr("1 + abs()"),
            ("function `abs` takes 1 argument, got 0".into(), 5)
        );
        assert_eq!(
            perr("len(s, s)"),
            ("function `len` takes 1 argument, got 2".into(), 1)
        );
        assert_eq!(
            perr("lower(1,2)").0,
            "function `lower` takes 1 argument, got 2"
        );
        assert_eq!(
            perr("upper()").0,
            "function `upper` takes 1 argument, got 0"
        );
        assert_eq!(
            perr("coalesce()"),
            (
                "function `coalesce` takes at least 1 argument, got 0".into(),
                1
            )
        );
        assert_eq!(
            perr("abs(1 2)"),
            ("expected `,` or `)` in call to `abs`, found `2`".into(), 7)
        );
        assert_eq!(
            perr("abs(1,)"),
            ("expected expression, found `)`".into(), 7)
        );
        assert_eq!(
            perr("abs(1"),
            (
                "expected `,` or `)` in call to `abs`, found end of input".into(),
                6
            )
        );
        assert!(perr("`abs`(1)").0.starts_with("unexpected `(`"));
    }

    // ---- eval_bool ----

    #[test]
    fn eval_bool_results() {
        let r = sample();
        let t = |s: &str| Expr::parse(s).unwrap().eval_bool(&r);
        assert_eq!(t("i > 5"), Ok(true));
        assert_eq!(t("i > 50"), Ok(false));
        assert_eq!(t("n"), Ok(false));
        assert_eq!(t("missing"), Ok(false));
        assert_eq!(t("b"), Ok(true));
        assert_eq!(t("i > 5 and s != 'a'"), Ok(true));
        let err = t("i").unwrap_err();
        assert_eq!(
            err.message,
            "in `i`: expected a boolean result, got integer"
        );
        assert_eq!(err.to_string(), err.message);
        assert_eq!(
            t("s + 1").unwrap_err().message,
            "in `s + 1`: cannot apply `+` to string and integer"
        );
        assert_eq!(
            t("arr").unwrap_err().message,
            "in `arr`: expected a boolean result, got array"
        );
    }

    #[test]
    fn eval_error_display() {
        let e = Expr::parse("price * qty").unwrap();
        let err = e.eval(&rec(json!({"price": "x", "qty": 2}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in `price * qty`: cannot apply `*` to string and integer"
        );
    }

    // ---- parse errors ----

    #[test]
    fn parse_error_display() {
        let err = Expr::parse("a + )").unwrap_err();
        assert_eq!(err.message, "expected expression, found `)`");
        assert_eq!(err.column, 5);
        assert_eq!(
            err.to_string(),
            "expected expression, found `)` at column 5 in `a + )`"
        );
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str, usize)] = &[
            ("", "empty expression", 1),
            ("   ", "empty expression", 1),
            ("a +", "expected expression, found end of input", 4),
            (
                "(a",
                "expected `)` to close `(` at column 1, found end of input",
                3,
            ),
            (
                "(a b",
                "expected `)` to close `(` at column 1, found `b`",
                4,
            ),
            (
                "a b",
                "unexpected `b`; expected an operator or end of input",
                3,
            ),
            (
                "a)",
                "unexpected `)`; expected an operator or end of input",
                2,
            ),
            (
                "1 2",
                "unexpected `2`; expected an operator or end of input",
                3,
            ),
            (
                "a < b < c",
                "comparison operators cannot be chained; use parentheses",
                7,
            ),
            (
                "a == b != c",
                "comparison operators cannot be chained; use parentheses",
                8,
            ),
            ("a = 1", "unexpected `=`; use `==` to compare", 3),
            ("a & b", "unexpected `&`; use `&&` or `and`", 3),
            ("a | b", "unexpected `|`; use `||` or `or`", 3),
            ("a # b", "unexpected character `#`", 3),
            ("é", "unexpected character `é`", 1),
            ("'abc", "unterminated string literal", 1),
            ("x == \"abc", "unterminated string literal", 6),
            ("'abc\\", "unterminated string literal", 1),
            ("`abc", "unterminated quoted field name", 1),
            ("'a\\qb'", "unknown escape sequence `\\q`", 3),
            ("12abc", "invalid number literal `12abc`", 1),
            ("1e", "invalid number literal `1e`", 1),
            ("1.", "invalid number literal `1.`", 1),
            ("x + 1.e3", "invalid number literal `1.e3`", 5),
            ("1.5x", "invalid number literal `1.5x`", 1),
            (".5", "expected expression, found `.`", 1),
            (
                "9223372036854775808",
                "integer literal `9223372036854775808` is out of range",
                1,
            ),
            (
                "-9223372036854775809",
                "integer literal `9223372036854775809` is out of range",
                2,
            ),
            (
                "123456789012345678901234567890",
                "integer literal `123456789012345678901234…` is out of range",
                1,
            ),
            ("1e999", "float literal `1e999` is out of range", 1),
            (
                "a.",
                "expected a field name after `.`, found end of input",
                3,
            ),
            ("a.1", "expected a field name after `.`, found `1`", 3),
            ("a.'b'", "expected a field name after `.`, found `'b'`", 3),
            ("and", "expected expression, found `and`", 1),
            ("a or or b", "expected expression, found `or`", 6),
            (
                "1 + not b",
                "expected expression, found `not`; put `not ...` in parentheses",
                5,
            ),
            (
                "1 == !b",
                "expected expression, found `!`; put `!...` in parentheses",
                6,
            ),
            ("()", "expected expression, found `)`", 2),
            (
                "true(1)",
                "unexpected `(`; expected an operator or end of input",
                5,
            ),
            (
                "a,b",
                "unexpected `,`; expected an operator or end of input",
                2,
            ),
            ("x ==", "expected expression, found end of input", 5),
        ];
        for &(src, msg, col) in cases {
            assert_eq!(perr(src), (msg.to_owned(), col), "source: {src}");
        }
    }

    #[test]
    fn columns_count_chars_not_bytes() {
        assert_eq!(
            perr("'héé' + )"),
            ("expected expression, found `)`".into(), 9)
        );
        assert_eq!(perr("a +\n)").1, 5);
    }

    #[test]
    fn nesting_limit() {
        let ok = format!("{}1{}", "(".repeat(64), ")".repeat(64));
        assert_eq!(
            Expr::parse(&ok).unwrap().eval(&Map::new()).unwrap(),
            json!(1)
        );
        let bad = format!("{}1{}", "(".repeat(65), ")".repeat(65));
        let err = Expr::parse(&bad).unwrap_err();
        assert_eq!(
            err.message,
            "expression is nested too deeply (the limit is 64 levels)"
        );
        assert_eq!(err.column, 65);
        assert!(Expr::parse(&format!("{}true", "not ".repeat(64))).is_ok());
        assert!(Expr::parse(&format!("{}true", "not ".repeat(65))).is_err());
        assert!(Expr::parse(&format!("{}x", "-".repeat(64))).is_ok());
        assert!(Expr::parse(&format!("{}x", "-".repeat(65))).is_err());
        let calls = format!("{}x{}", "abs(".repeat(65), ")".repeat(65));
        assert!(Expr::parse(&calls).is_err());
        // Deep nesting of every kind must not overflow the stack.
        let huge = format!("{}1{}", "(".repeat(30_000), ")".repeat(30_000));
        assert!(Expr::parse(&huge).is_err());
        assert!(Expr::parse(&"!".repeat(60_000)).is_err());
    }

    #[test]
    fn long_flat_chains_do_not_nest() {
        let n = 20_000;
        let sum = vec!["1"; n].join("+");
        assert!(sum.len() <= MAX_SOURCE_BYTES);
        assert_eq!(
            Expr::parse(&sum).unwrap().eval(&Map::new()).unwrap(),
            json!(n)
        );
        let ors = vec!["x == 1"; 6_000].join(" or ");
        let e = Expr::parse(&ors).unwrap();
        assert_eq!(e.eval_bool(&rec(json!({"x": 1}))), Ok(true));
        assert_eq!(e.eval_bool(&rec(json!({"x": 2}))), Ok(false));
        assert_eq!(e.fields(), vec!["x"]);
        let ands = vec!["true"; 10_000].join("&&");
        assert_eq!(Expr::parse(&ands).unwrap().eval_bool(&Map::new()), Ok(true));
    }

    #[test]
    fn length_limit() {
        let ok = format!("1{}", " ".repeat(MAX_SOURCE_BYTES - 1));
        assert!(Expr::parse(&ok).is_ok());
        let long = format!("1{}", " ".repeat(MAX_SOURCE_BYTES));
        let err = Expr::parse(&long).unwrap_err();
        assert_eq!(
            err.message,
            "expression is too long (65537 bytes; the limit is 65536)"
        );
        assert_eq!(err.column, 1);
        // The expression text is shortened in the display.
        assert!(err.to_string().len() < 1000);
        assert!(err.to_string().ends_with("…`"));
    }

    #[test]
    fn long_source_is_shortened_in_eval_errors() {
        let src = format!("s * {}", vec!["1"; 400].join(" + "));
        let err = Expr::parse(&src).unwrap().eval(&sample()).unwrap_err();
        assert!(err.message.starts_with("in `s * 1 + 1"));
        assert!(err
            .message
            .ends_with("…`: cannot apply `*` to string and integer"));
    }

    #[test]
    fn whitespace_is_flexible() {
        assert_eq!(ev("\n\t i\n+\r\n1 "), json!(8));
        assert_eq!(ev("i>1"), json!(true));
        assert_eq!(ev("(i)==7"), json!(true));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn record() -> Map<String, Value> {
        match json!({
            "a": 3, "b": -2, "c": 0, "f": 1.5, "g": -0.25, "s": "xy", "S": "ÀB",
            "t": true, "u": false, "n": null, "arr": [1, "x"], "obj": {"k": {"m": 1}},
            "max": i64::MAX, "min": i64::MIN, "big": u64::MAX, "tiny": 5e-324, "huge": 1e308,
        }) {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    const VOCAB: &[&str] = &[
        "a",
        "b",
        "c",
        "f",
        "g",
        "s",
        "S",
        "t",
        "u",
        "n",
        "arr",
        "obj",
        "obj.k.m",
        "max",
        "min",
        "big",
        "tiny",
        "huge",
        "missing",
        "`a`",
        "0",
        "1",
        "-1",
        "2",
        "7",
        "1.5",
        "0.0",
        "1e308",
        "9223372036854775807",
        "'x'",
        "\"xy\"",
        "''",
        "(",
        ")",
        "(",
        ")",
        "+",
        "-",
        "*",
        "/",
        "%",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "and",
        "or",
        "not",
        "&&",
        "||",
        "!",
        "true",
        "false",
        "null",
        "abs(",
        "lower(",
        "upper(",
        "len(",
        "coalesce(",
        ",",
        ".",
        "=",
        "'",
        "`",
        "\\",
        "é",
    ];

    /// Token soup: mostly-plausible expressions that exercise the parser and
    /// the evaluator's type combinations.
    fn soup() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(VOCAB), 0..24).prop_map(|v| v.join(" "))
    }

    /// Well-formed expressions (fully parenthesised) over the fields of
    /// [`record`], mixing every operator, function and value type.
    fn well_formed() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(
            &[
                "a", "b", "c", "f", "g", "s", "S", "t", "u", "n", "arr", "obj", "obj.k", "obj.k.m",
                "max", "min", "big", "tiny", "huge", "missing", "0", "1", "-1", "7", "2.5", "0.0",
                "'x'", "'xy'", "''", "null", "true", "false", "1e308",
            ][..],
        )
        .prop_map(str::to_owned);
        leaf.prop_recursive(5, 64, 3, |inner| {
            let binop = prop::sample::select(
                &[
                    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "&&",
                    "||",
                ][..],
            );
            let func = prop::sample::select(&["abs", "lower", "upper", "len"][..]);
            prop_oneof![
                (inner.clone(), binop, inner.clone())
                    .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
                inner.clone().prop_map(|x| format!("(not {x})")),
                inner.clone().prop_map(|x| format!("-{x}")),
                (func, inner.clone()).prop_map(|(f, x)| format!("{f}({x})")),
                prop::collection::vec(inner, 1..4)
                    .prop_map(|v| format!("coalesce({})", v.join(", "))),
            ]
        })
    }

    fn check_eval(src: &str) {
        if let Ok(e) = Expr::parse(src) {
            let r = record();
            let full = e.eval(&r);
            let pred = e.eval_bool(&r);
            match full {
                Ok(Value::Bool(b)) => assert_eq!(pred, Ok(b)),
                Ok(Value::Null) => assert_eq!(pred, Ok(false)),
                Ok(_) => assert!(pred.is_err()),
                Err(err) => assert_eq!(pred, Err(err)),
            }
            let _ = e.fields();
            let _ = e.eval(&Map::new());
        }
    }

    proptest! {
        #![proptest_config(config(2000))]

        #[test]
        fn parse_never_panics_on_random_strings(s in any::<String>()) {
            let _ = Expr::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_operator_soup(s in "[a-z0-9 ().,'\"`\\\\=!<>&|+*/%-]{0,40}") {
            let _ = Expr::parse(&s);
            check_eval(&s);
        }

        #[test]
        fn token_soup_parses_and_evaluates_without_panic(s in soup()) {
            check_eval(&s);
        }

        #[test]
        fn well_formed_expressions_parse_and_evaluate_consistently(s in well_formed()) {
            let parsed = Expr::parse(&s);
            prop_assert!(parsed.is_ok(), "{}: {:?}", s, parsed);
            check_eval(&s);
            if let Ok(e) = parsed {
                if let Err(err) = e.eval(&record()) {
                    let prefix = format!("in `{s}`: ");
                    prop_assert!(err.message.starts_with(&prefix), "{}", err.message);
                }
            }
        }
    }

    /// Reference model for `x op y` on integers.
    fn int_model(op: &str, x: i64, y: i64) -> Result<Value, String> {
        let r = match op {
            "+" => x.checked_add(y),
            "-" => x.checked_sub(y),
            "*" => x.checked_mul(y),
            "/" => {
                if y == 0 {
                    return Err("division by zero".into());
                }
                match x.checked_rem(y) {
                    None => None,
                    Some(0) => x.checked_div(y),
                    Some(_) => return Ok(json!(x as f64 / y as f64)),
                }
            }
            _ => {
                if y == 0 {
                    return Err("modulo by zero".into());
                }
                x.checked_rem(y)
            }
        };
        r.map(|v| json!(v))
            .ok_or_else(|| format!("integer overflow in `{op}`"))
    }

    /// Reference model for `x op y` where at least one side is a float.
    fn float_model(op: &str, x: f64, y: f64) -> Result<Value, String> {
        let r = match op {
            "+" => x + y,
            "-" => x - y,
            "*" => x * y,
            "/" if y == 0.0 => return Err("division by zero".into()),
            "/" => x / y,
            _ if y == 0.0 => return Err("modulo by zero".into()),
            _ => x % y,
        };
        if r.is_finite() {
            Ok(json!(r))
        } else {
            Err(format!("float overflow in `{op}`: result is not finite"))
        }
    }

    fn run(src: &str, r: &Map<String, Value>) -> Result<Value, String> {
        let e = Expr::parse(src).map_err(|e| e.to_string())?;
        let prefix = format!("in `{src}`: ");
        e.eval(r).map_err(|e| {
            e.message
                .strip_prefix(&prefix)
                .unwrap_or(&e.message)
                .to_owned()
        })
    }

    fn small_or_any_i64() -> impl Strategy<Value = i64> {
        prop_oneof![
            -20i64..20,
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
            Just(-1i64),
            Just(0i64),
            (-3_037_000_499i64..3_037_000_499),
        ]
    }

    fn any_finite_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            -100.0f64..100.0,
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            Just(0.0f64),
            Just(-0.0f64),
            Just(1e308f64),
        ]
    }

    fn arith_op() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["+", "-", "*", "/", "%"][..])
    }

    proptest! {
        #![proptest_config(config(1000))]

        #[test]
        fn integer_arithmetic_matches_i64_model(
            x in small_or_any_i64(), y in small_or_any_i64(), op in arith_op()
        ) {
            let r = match json!({"x": x, "y": y}) { Value::Object(m) => m, _ => Map::new() };
            let want = int_model(op, x, y);
            prop_assert_eq!(run(&format!("x {op} y"), &r), want.clone());
            // Same through literals (negative literals are folded).
            prop_assert_eq!(run(&format!("{x} {op} {y}"), &Map::new()), want);
        }

        #[test]
        fn mixed_arithmetic_matches_f64_model(
            x in small_or_any_i64(), f in any_finite_f64(), op in arith_op(), swap in any::<bool>()
        ) {
            let r = match json!({"x": x, "f": f}) { Value::Object(m) => m, _ => Map::new() };
            let (src, want) = if swap {
                ("f OP x", float_model(op, f, x as f64))
            } else {
                ("x OP f", float_model(op, x as f64, f))
            };
            prop_assert_eq!(run(&src.replace("OP", op), &r), want);
        }

        #[test]
        fn float_arithmetic_matches_f64_model(
            x in any_finite_f64(), y in any_finite_f64(), op in arith_op()
        ) {
            let r = match json!({"x": x, "y": y}) { Value::Object(m) => m, _ => Map::new() };
            prop_assert_eq!(run(&format!("x {op} y"), &r), float_model(op, x, y));
        }

        #[test]
        fn integer_comparisons_match_model(x in small_or_any_i64(), y in small_or_any_i64()) {
            let r = match json!({"x": x, "y": y}) { Value::Object(m) => m, _ => Map::new() };
            let e = |s: &str| Expr::parse(s).map(|e| e.eval_bool(&r));
            prop_assert_eq!(e("x < y"), Ok(Ok(x < y)));
            prop_assert_eq!(e("x <= y"), Ok(Ok(x <= y)));
            prop_assert_eq!(e("x > y"), Ok(Ok(x > y)));
            prop_assert_eq!(e("x >= y"), Ok(Ok(x >= y)));
            prop_assert_eq!(e("x == y"), Ok(Ok(x == y)));
            prop_assert_eq!(e("x != y"), Ok(Ok(x != y)));
        }

        #[test]
        fn int_float_comparison_is_exact(x in small_or_any_i64(), f in any_finite_f64()) {
            // Model: exact rational comparison via i128 when the float is
            // integral and in range, otherwise via f64 (exact away from ties).
            let r = match json!({"x": x, "f": f}) { Value::Object(m) => m, _ => Map::new() };
            let want = if f.fract() == 0.0 && f.abs() < 1e30 {
                i128::from(x).cmp(&(f as i128))
            } else if f > 1e30 {
                Ordering::Less
            } else if f < -1e30 {
                Ordering::Greater
            } else {
                // x is an integer and f is not: compare x with floor(f).
                match i128::from(x).cmp(&(f.floor() as i128)) {
                    Ordering::Greater => Ordering::Greater,
                    _ => Ordering::Less,
                }
            };
            let lt = Expr::parse("x < f").map(|e| e.eval_bool(&r));
            let eq = Expr::parse("x == f").map(|e| e.eval_bool(&r));
            let gt = Expr::parse("f < x").map(|e| e.eval_bool(&r));
            prop_assert_eq!(lt, Ok(Ok(want == Ordering::Less)));
            prop_assert_eq!(eq, Ok(Ok(want == Ordering::Equal)));
            prop_assert_eq!(gt, Ok(Ok(want == Ordering::Greater)));
        }
    }
}
