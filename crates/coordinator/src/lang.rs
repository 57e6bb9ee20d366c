//! Choice of language for API error messages, from `Accept-Language`.

use axum::http::HeaderMap;

/// A language that API error messages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// Picks the language from an `Accept-Language` header: the supported
    /// language with the highest q-value wins, ties go to the one listed
    /// first, and English is the fallback. Any `zh` tag selects Simplified
    /// Chinese, because that is the only Chinese catalogue.
    pub fn from_headers(headers: &HeaderMap) -> Lang {
        let Some(value) = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|value| value.to_str().ok())
        else {
            return Lang::En;
        };
        Lang::from_accept_language(value)
    }

    pub fn from_accept_language(value: &str) -> Lang {
        let mut best: Option<(f32, Lang)> = None;

        for entry in value.split(',') {
            let mut parts = entry.split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let quality = parts
                .find_map(|param| param.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);

            let lang = if tag == "zh" || tag.starts_with("zh-") {
                Lang::Zh
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };

            if quality > 0.0 && best.is_none_or(|(best_quality, _)| quality > best_quality) {
                best = Some((quality, lang));
            }
        }

        best.map(|(_, lang)| lang).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_tags_select_chinese() {
        assert_eq!(Lang::from_accept_language("zh-CN"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("zh-Hans-CN,zh;q=0.9"), Lang::Zh);
    }

    #[test]
    fn quality_decides_between_languages() {
        assert_eq!(Lang::from_accept_language("en;q=0.5, zh;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept_language("zh;q=0.3, en"), Lang::En);
    }

    #[test]
    fn unsupported_language_falls_back_to_english() {
        assert_eq!(Lang::from_accept_language("fr-FR"), Lang::En);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(Lang::from_accept_language("zh;q=0"), Lang::En);
    }
}
