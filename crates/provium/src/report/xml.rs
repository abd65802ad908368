//! A small XML element tree, for the JUnit report: written with every text
//! and attribute escaped for XML 1.0 (no CDATA sections), and read back with
//! `quick-xml` (for `provium merge-junit`). It knows nothing of JUnit.
//!
//! XML 1.0 cannot carry most C0 control characters (it allows tab, line
//! feed and carriage return only) nor U+FFFE and U+FFFF, not even as
//! character references. Console output is full of them (ANSI colours,
//! backspaces), so the writer replaces each C0 control with its Unicode
//! "control picture" (`\x1b` becomes `␛`) and U+FFFE/U+FFFF with `�`.

use std::fmt::Write;

use quick_xml::events::Event as XmlEvent;
use quick_xml::XmlVersion;

/// An element: its name, attributes in order, and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// A piece of an element's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(name: &str) -> Element {
        Element { name: name.to_string(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Adds (or replaces) attribute `key`.
    pub fn attr(mut self, key: &str, value: impl ToString) -> Element {
        self.set(key, value);
        self
    }

    /// Appends a child element.
    pub fn child(mut self, e: Element) -> Element {
        self.children.push(Node::Element(e));
        self
    }

    /// Appends text (joined to text just before it).
    pub fn text(mut self, text: &str) -> Element {
        self.push_text(text);
        self
    }

    fn push_text(&mut self, text: &str) {
        match self.children.last_mut() {
            Some(Node::Text(t)) => t.push_str(text),
            _ => self.children.push(Node::Text(text.to_string())),
        }
    }

    /// Sets attribute `key`, in place if it is there, else at the end.
    pub fn set(&mut self, key: &str, value: impl ToString) {
        let value = value.to_string();
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.attrs.push((key.to_string(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The direct text content, joined.
    pub fn text_content(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }
}

/// Whether XML 1.0 can carry `c` at all.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..) && !matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// What stands for a character XML 1.0 cannot carry.
fn replacement(c: char) -> char {
    if c < ' ' {
        char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}')
    } else {
        '\u{FFFD}'
    }
}

fn escape(s: &str, in_attr: bool, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // A raw CR would be read back as a line feed.
            '\r' => out.push_str("&#13;"),
            '"' if in_attr => out.push_str("&quot;"),
            // Raw tabs and line feeds in an attribute are read back as spaces.
            '\n' if in_attr => out.push_str("&#10;"),
            '\t' if in_attr => out.push_str("&#9;"),
            c if !allowed(c) => out.push(replacement(c)),
            c => out.push(c),
        }
    }
}

/// `s` as element content.
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape(s, false, &mut out);
    out
}

/// `s` as a double-quoted attribute value.
pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape(s, true, &mut out);
    out
}

/// The whole document: the declaration, then `root`, indented by two
/// spaces. An element with text is written on one line as it is, so its
/// text reads back exactly.
pub fn to_document(root: &Element) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    write_element(&mut out, root, Some(0));
    out
}

/// `depth`: the indentation level, or `None` inside text (no added
/// whitespace at all).
fn write_element(out: &mut String, e: &Element, depth: Option<usize>) {
    if let Some(d) = depth {
        let _ = write!(out, "{:1$}", "", d * 2);
    }
    let _ = write!(out, "<{}", e.name);
    for (k, v) in &e.attrs {
        let _ = write!(out, " {k}=\"{}\"", escape_attr(v));
    }
    let has_text = e.children.iter().any(|n| matches!(n, Node::Text(_)));
    if e.children.is_empty() {
        out.push_str("/>");
    } else if has_text || depth.is_none() {
        out.push('>');
        for n in &e.children {
            match n {
                Node::Text(t) => escape(t, false, out),
                Node::Element(c) => write_element(out, c, None),
            }
        }
        let _ = write!(out, "</{}>", e.name);
    } else {
        out.push_str(">\n");
        for c in e.elements() {
            write_element(out, c, depth.map(|d| d + 1));
        }
        let _ = write!(out, "{:1$}</{2}>", "", depth.unwrap_or(0) * 2, e.name);
    }
    if depth.is_some() {
        out.push('\n');
    }
}

/// Why a text is not a document [`parse`] can read.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// quick-xml's error text already includes its cause's (and would
    /// repeat it as a source), so only the text is kept.
    #[error("not well-formed XML at byte {position}: {message}")]
    Syntax { position: u64, message: String },
    #[error("unknown entity `&{name};` at byte {position}")]
    UnknownEntity { name: String, position: u64 },
    #[error("element `<{0}>` is not closed at the end of the document")]
    Unclosed(String),
    #[error("content after the root element, at byte {0}")]
    AfterRoot(u64),
    #[error("text outside the root element, at byte {0}")]
    TextOutside(u64),
    #[error("no root element")]
    NoRoot,
}

fn start(reader: &quick_xml::Reader<&[u8]>, e: &quick_xml::events::BytesStart) -> Result<Element, XmlError> {
    let syntax = |e: quick_xml::Error| XmlError::Syntax { position: reader.error_position(), message: e.to_string() };
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut el = Element::new(&name);
    for a in e.attributes() {
        let a = a.map_err(|err| syntax(err.into()))?;
        let value = a.normalized_value(XmlVersion::Implicit1_0).map_err(syntax)?;
        el.attrs.push((String::from_utf8_lossy(a.key.as_ref()).into_owned(), value.into_owned()));
    }
    Ok(el)
}

/// Reads a document into its root element. Comments, processing
/// instructions and the doctype are dropped; so is whitespace between
/// elements (text in an element that also has child elements, and is only
/// whitespace).
pub fn parse(text: &str) -> Result<Element, XmlError> {
    let mut reader = quick_xml::Reader::from_reader(text.as_bytes());
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    // Closes `el`: into its parent, or as the root.
    let close = |stack: &mut Vec<Element>, root: &mut Option<Element>, mut el: Element, at: u64| {
        if el.children.iter().any(|n| matches!(n, Node::Element(_))) {
            el.children.retain(|n| !matches!(n, Node::Text(t) if t.trim().is_empty()));
        }
        match stack.last_mut() {
            Some(parent) => parent.children.push(Node::Element(el)),
            None if root.is_some() => return Err(XmlError::AfterRoot(at)),
            None => *root = Some(el),
        }
        Ok(())
    };
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Syntax { position: reader.error_position(), message: e.to_string() })?;
        let syntax = |e: quick_xml::Error| XmlError::Syntax { position: at, message: e.to_string() };
        let add_text = |stack: &mut Vec<Element>, t: &str| match stack.last_mut() {
            Some(el) => {
                el.push_text(t);
                Ok(())
            }
            None if t.trim().is_empty() => Ok(()),
            None => Err(XmlError::TextOutside(at)),
        };
        match event {
            XmlEvent::Start(e) => {
                if root.is_some() {
                    return Err(XmlError::AfterRoot(at));
                }
                stack.push(start(&reader, &e)?);
            }
            XmlEvent::Empty(e) => {
                let el = start(&reader, &e)?;
                close(&mut stack, &mut root, el, at)?;
            }
            XmlEvent::End(_) => {
                // quick-xml checks that the end tag matches its start tag.
                if let Some(el) = stack.pop() {
                    close(&mut stack, &mut root, el, at)?;
                }
            }
            XmlEvent::Text(t) => add_text(&mut stack, &t.xml10_content().map_err(|e| syntax(e.into()))?)?,
            XmlEvent::CData(t) => add_text(&mut stack, &t.decode().map_err(|e| syntax(e.into()))?)?,
            XmlEvent::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(syntax)? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| syntax(e.into()))?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => s.to_string(),
                            None => return Err(XmlError::UnknownEntity { name: name.into_owned(), position: at }),
                        }
                    }
                };
                add_text(&mut stack, &resolved)?;
            }
            XmlEvent::Comment(_) | XmlEvent::Decl(_) | XmlEvent::PI(_) | XmlEvent::DocType(_) => {}
            XmlEvent::Eof => break,
        }
    }
    if let Some(open) = stack.pop() {
        return Err(XmlError::Unclosed(open.name));
    }
    root.ok_or(XmlError::NoRoot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attributes_are_escaped_and_forbidden_characters_replaced() {
        assert_eq!(escape_text("a<b & c>d \"q\" 'x'"), "a&lt;b &amp; c&gt;d \"q\" 'x'");
        assert_eq!(escape_attr("say \"hi\"\nthen\tgo"), "say &quot;hi&quot;&#10;then&#9;go");
        assert_eq!(escape_text("\x1b[31mred\x1b[0m\x00\x08\r\n\t"), "␛[31mred␛[0m␀␈&#13;\n\t");
        assert_eq!(escape_text("\u{FFFE}\u{FFFF}\u{FFFD}é😀"), "\u{FFFD}\u{FFFD}\u{FFFD}é😀");
        assert_eq!(escape_text("]]>"), "]]&gt;");
    }

    #[test]
    fn a_document_is_indented_and_text_is_kept_as_is() {
        let doc = Element::new("r")
            .attr("n", "1")
            .child(Element::new("a").attr("x", "<&>"))
            .child(Element::new("b").text("  line 1\n  line 2\n"));
        assert_eq!(
            to_document(&doc),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<r n=\"1\">\n  <a x=\"&lt;&amp;&gt;\"/>\n  \
             <b>  line 1\n  line 2\n</b>\n</r>\n"
        );
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let doc = Element::new("testsuites").attr("tests", 2).child(
            Element::new("testsuite")
                .attr("name", "a \"b\"\n\tc & <d>")
                .child(Element::new("testcase").attr("name", "x"))
                .child(
                    Element::new("testcase")
                        .child(Element::new("failure").attr("message", "m").text("line 1\r\n  <line 2> & ]]>\n\n   ")),
                ),
        );
        assert_eq!(parse(&to_document(&doc)).unwrap(), doc);
    }

    #[test]
    fn entities_cdata_and_comments_are_read() {
        let e = parse("<?xml version=\"1.0\"?>\n<!-- c --><r a='&#x41;&lt;'>x&amp;y&#65;<![CDATA[<z>]]><e/></r>\n")
            .unwrap();
        assert_eq!(e.get("a"), Some("A<"));
        assert_eq!(e.text_content(), "x&yA<z>");
        assert_eq!(e.elements().count(), 1);
    }

    #[test]
    fn broken_documents_are_refused() {
        let err = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            err("<a><b></a>"),
            "not well-formed XML at byte 6: ill-formed document: expected `</b>`, but `</a>` was found"
        );
        assert_eq!(err("<a><b>"), "element `<b>` is not closed at the end of the document");
        assert_eq!(err("<a/><b/>"), "content after the root element, at byte 4");
        assert_eq!(err("x<a/>"), "text outside the root element, at byte 0");
        assert_eq!(err("<a>&nope;</a>"), "unknown entity `&nope;` at byte 3");
        assert_eq!(err(""), "no root element");
        assert!(parse("<a x=\"1></a>").is_err());
    }
}
