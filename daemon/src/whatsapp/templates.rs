//! Template categories: which of Meta's categories (marketing, utility, authentication) each
//! message template has. The category decides the endpoint (marketing templates go to
//! `/{phone_number_id}/marketing_messages`, all others to `/messages`) and what a send costs.
//!
//! The box's templates are configured with their category (`[whatsapp.template_categories]`).
//! Meta may recategorise an approved template and announces it with the
//! `template_category_update` webhook; a completed change is kept in the store's `meta` keyspace
//! (`template-category/<name>/<language>`) and wins over the configuration. Template names,
//! languages and categories are no personal data, so these rows are clear text.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::payload::TemplateCategoryUpdate;
use crate::stats::PricingCategory;
use crate::store::{Result, Store};

const KEY_PREFIX: &str = "template-category/";

/// Graph error code of `/marketing_messages` for a template that is not a marketing template
/// ("(#131055) Method not allowed"), as providers of the Marketing Messages API document it.
pub const NOT_A_MARKETING_TEMPLATE: i64 = 131_055;

/// Meta's category of a message template.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateCategory {
    /// Promotional content; sent through `/marketing_messages`.
    #[serde(alias = "MARKETING")]
    Marketing,
    /// About something the customer asked for or did (confirmations, reminders).
    #[serde(alias = "UTILITY")]
    Utility,
    /// One-time passcodes.
    #[serde(alias = "AUTHENTICATION")]
    Authentication,
}

impl TemplateCategory {
    /// Reads Meta's spelling (`MARKETING`) or ours (`marketing`).
    pub fn parse(s: &str) -> Option<TemplateCategory> {
        match s.trim().to_ascii_lowercase().as_str() {
            "marketing" => Some(TemplateCategory::Marketing),
            "utility" => Some(TemplateCategory::Utility),
            "authentication" => Some(TemplateCategory::Authentication),
            _ => None,
        }
    }

    /// `marketing`, `utility` or `authentication`.
    pub fn name(self) -> &'static str {
        match self {
            TemplateCategory::Marketing => "marketing",
            TemplateCategory::Utility => "utility",
            TemplateCategory::Authentication => "authentication",
        }
    }

    /// What a template of this category is billed as.
    pub fn pricing(self) -> PricingCategory {
        match self {
            TemplateCategory::Marketing => PricingCategory::Marketing,
            TemplateCategory::Utility => PricingCategory::Utility,
            TemplateCategory::Authentication => PricingCategory::Authentication,
        }
    }
}

impl fmt::Display for TemplateCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a template's category came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategorySource {
    /// Meta's `template_category_update` webhook (kept in the store).
    Webhook,
    /// `[whatsapp.template_categories]`.
    Configured,
    /// Neither knows the template: it is treated as utility (sent through `/messages`).
    Assumed,
}

/// A template's category and where it came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KnownCategory {
    /// The category sends are routed and counted by.
    pub category: TemplateCategory,
    /// Where it came from.
    pub source: CategorySource,
}

/// A category change as kept in the store.
#[derive(Debug, Serialize, Deserialize)]
struct StoredCategory {
    category: TemplateCategory,
    template_id: Option<String>,
    /// Unix seconds at which the webhook was received.
    at: i64,
}

fn key(name: &str, language: &str) -> String {
    format!("{KEY_PREFIX}{name}/{language}")
}

/// The categories of the box's templates: the configuration, overridden by the changes Meta
/// announced. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TemplateCategories {
    configured: BTreeMap<String, TemplateCategory>,
}

impl TemplateCategories {
    /// Categories as configured (template name → category).
    pub fn new(configured: BTreeMap<String, TemplateCategory>) -> TemplateCategories {
        TemplateCategories { configured }
    }

    /// The current category of template `name` in `language`: a change Meta announced for
    /// exactly that template wins over the configuration; an unknown template is assumed to be
    /// utility.
    pub fn lookup(&self, store: &Store, name: &str, language: &str) -> Result<KnownCategory> {
        if let Some(v) = store.keyspaces().meta.get(key(name, language))? {
            // A row this module wrote; an unreadable one is skipped, not fatal to sending.
            if let Ok(stored) = serde_json::from_slice::<StoredCategory>(&v) {
                return Ok(KnownCategory {
                    category: stored.category,
                    source: CategorySource::Webhook,
                });
            }
        }
        Ok(self.configured(name))
    }

    /// The category of template `name` as configured (utility, assumed, when it is not).
    pub fn configured(&self, name: &str) -> KnownCategory {
        match self.configured.get(name) {
            Some(&category) => KnownCategory {
                category,
                source: CategorySource::Configured,
            },
            None => KnownCategory {
                category: TemplateCategory::Utility,
                source: CategorySource::Assumed,
            },
        }
    }
}

/// What [`record_update`] did with a category webhook.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UpdateOutcome {
    /// The template's category changed to this one; sends follow it from now on.
    Applied(TemplateCategory),
    /// Meta announced a change for later (`correct_category`): nothing changes yet.
    Impending,
    /// The new category is none this module knows (a category Meta added later).
    UnknownCategory,
}

/// Adds a completed category change to `batch`. Meta documents that routing must follow only
/// the completed notification (`previous_category` and `new_category`); an impending one
/// (`correct_category`, sent about a day ahead, whose `new_category` is still the current one)
/// changes nothing.
pub fn record_update(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    update: &TemplateCategoryUpdate,
    at: Timestamp,
) -> UpdateOutcome {
    if update.correct_category.is_some() && update.previous_category.is_none() {
        return UpdateOutcome::Impending;
    }
    let Some(category) = TemplateCategory::parse(&update.new_category) else {
        return UpdateOutcome::UnknownCategory;
    };
    let row = StoredCategory {
        category,
        template_id: update.template_id.clone(),
        at: at.as_second(),
    };
    batch.insert(
        &store.keyspaces().meta,
        key(&update.name, &update.language).into_bytes(),
        serde_json::to_vec(&row).expect("a category row serialises"),
    );
    UpdateOutcome::Applied(category)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;

    fn update(name: &str, previous: Option<&str>, new: &str) -> TemplateCategoryUpdate {
        TemplateCategoryUpdate {
            template_id: Some("1234".into()),
            name: name.into(),
            language: "de".into(),
            previous_category: previous.map(str::to_owned),
            new_category: new.into(),
            correct_category: None,
        }
    }

    #[test]
    fn webhook_change_overrides_configuration_for_that_language_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let cats = TemplateCategories::new(BTreeMap::from([(
            "erinnerung".to_string(),
            TemplateCategory::Utility,
        )]));
        let known = cats.lookup(&store, "erinnerung", "de").unwrap();
        assert_eq!(known.category, TemplateCategory::Utility);
        assert_eq!(known.source, CategorySource::Configured);
        let unknown = cats.lookup(&store, "angebot", "de").unwrap();
        assert_eq!(unknown.source, CategorySource::Assumed);
        assert_eq!(unknown.category, TemplateCategory::Utility);

        // An impending change is only an announcement.
        let mut batch = store.batch();
        let mut impending = update("erinnerung", None, "UTILITY");
        impending.correct_category = Some("MARKETING".into());
        assert_eq!(
            record_update(&store, &mut batch, &impending, Timestamp::now()),
            UpdateOutcome::Impending
        );
        assert_eq!(
            record_update(
                &store,
                &mut batch,
                &update("erinnerung", Some("UTILITY"), "FANCY_NEW"),
                Timestamp::now()
            ),
            UpdateOutcome::UnknownCategory
        );
        store.commit_durable(batch).unwrap();
        assert_eq!(
            cats.lookup(&store, "erinnerung", "de").unwrap().source,
            CategorySource::Configured
        );

        let mut batch = store.batch();
        assert_eq!(
            record_update(
                &store,
                &mut batch,
                &update("erinnerung", Some("UTILITY"), "MARKETING"),
                Timestamp::now()
            ),
            UpdateOutcome::Applied(TemplateCategory::Marketing)
        );
        store.commit_durable(batch).unwrap();
        let now = cats.lookup(&store, "erinnerung", "de").unwrap();
        assert_eq!(now.category, TemplateCategory::Marketing);
        assert_eq!(now.source, CategorySource::Webhook);
        assert_eq!(
            cats.lookup(&store, "erinnerung", "en_US").unwrap().category,
            TemplateCategory::Utility
        );
    }

    #[test]
    fn categories_parse_in_both_spellings() {
        assert_eq!(
            TemplateCategory::parse("MARKETING"),
            Some(TemplateCategory::Marketing)
        );
        assert_eq!(
            TemplateCategory::parse("utility"),
            Some(TemplateCategory::Utility)
        );
        assert_eq!(TemplateCategory::parse("service"), None);
        let t: BTreeMap<String, TemplateCategory> =
            toml::from_str("a = \"marketing\"\nb = \"AUTHENTICATION\"\n").unwrap();
        assert_eq!(t["a"], TemplateCategory::Marketing);
        assert_eq!(t["b"], TemplateCategory::Authentication);
        assert_eq!(
            TemplateCategory::Authentication.pricing(),
            PricingCategory::Authentication
        );
    }
}
