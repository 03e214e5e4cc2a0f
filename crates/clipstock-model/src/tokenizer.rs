//! CLIP BPE tokenization with open_clip's text cleaning and truncation.

use instant_clip_tokenizer::Tokenizer;

pub const SOT: u32 = 49406;
pub const EOT: u32 = 49407;
pub const CONTEXT_LENGTH: usize = 77;
/// Rows a token embedding needs: OpenAI's BPE emits ids up to [`EOT`].
pub const VOCAB_SIZE: usize = EOT as usize + 1;
/// The shortest context [`ClipTokenizer`] encodes into (start, one token, end).
pub const MIN_CONTEXT_LENGTH: usize = 3;

/// open_clip's `tokenize`: `[SOT] + bpe(clean(text)) + [EOT]`, truncated to the context length
/// with EOT kept as the last token, zero padded.
pub struct ClipTokenizer {
    inner: Tokenizer,
    context_length: usize,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new(CONTEXT_LENGTH)
    }
}

impl ClipTokenizer {
    pub fn new(context_length: usize) -> Self {
        ClipTokenizer {
            inner: Tokenizer::new(),
            context_length: context_length.max(MIN_CONTEXT_LENGTH),
        }
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Token ids of one text, exactly `context_length` long.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = clean(text);
        let mut tokens = Vec::with_capacity(self.context_length);
        tokens.push(self.inner.start_of_text());
        self.inner.encode(&cleaned, &mut tokens);
        let mut ids: Vec<u32> = tokens.into_iter().map(|t| u32::from(t.to_u16())).collect();
        if ids.len() >= self.context_length {
            ids.truncate(self.context_length - 1);
        }
        ids.push(EOT);
        ids.resize(self.context_length, 0);
        ids
    }

    /// Row-major `[texts.len(), context_length]` ids.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Vec<u32> {
        texts.iter().flat_map(|t| self.encode(t.as_ref())).collect()
    }
}

/// open_clip's cleaning: HTML-unescape twice, collapse whitespace, strip. (open_clip also runs
/// `ftfy.fix_text`, which repairs mojibake; well-formed UTF-8 such as the ImageNet prompts is
/// unchanged by it, so it is not reproduced.)
pub fn clean(text: &str) -> String {
    let once = html_unescape(text);
    let twice = html_unescape(&once);
    twice.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The character references prompts realistically contain: the five XML entities, `&nbsp;`
/// and numeric references. Anything else is left as written.
fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let num = name.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse::<u32>().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((ch, e + 1))
        });
        match decoded {
            Some((ch, len)) => {
                out.push(ch);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = ClipTokenizer::new(6);
        assert_eq!(t.encode("Hi"), [SOT, 1883, EOT, 0, 0, 0]);
        // Truncation keeps EOT last.
        let long = t.encode("how are you doing today my friend");
        assert_eq!(long.len(), 6);
        assert_eq!(long[5], EOT);
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean("  fish &amp;amp; chips\n"), "fish & chips");
        assert_eq!(clean("a &#39;b&#x27; &unknown; & c"), "a 'b' &unknown; & c");
    }
}
