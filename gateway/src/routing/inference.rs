//! Data-class inference as routing sees it: what the request's text scan found (detector ids
//! and counts, never the text), the policy's floors, and the class that follows. Pure: the
//! scan itself is `crate::dataclass`.
//!
//! The effective class is `max(declared, inferred)`: a finding can only raise a request's
//! class, never lower it.

use std::collections::BTreeMap;

use super::types::DataClass;

/// What kind of thing a detector finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Email,
    Phone,
    Card,
    Iban,
    NationalId,
    Secret,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Email,
        Category::Phone,
        Category::Card,
        Category::Iban,
        Category::NationalId,
        Category::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Email => "email",
            Category::Phone => "phone",
            Category::Card => "payment_card",
            Category::Iban => "iban",
            Category::NationalId => "national_id",
            Category::Secret => "secret",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The floor when a policy names none: a secret, a card, an IBAN or a national id makes a
    /// request confidential; an email address or a phone number internal.
    pub fn default_floor(self) -> DataClass {
        match self {
            Category::Email | Category::Phone => DataClass::Internal,
            Category::Card | Category::Iban | Category::NationalId | Category::Secret => {
                DataClass::Confidential
            }
        }
    }
}

/// One detector's hits in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detection {
    pub detector: &'static str,
    pub category: Category,
    pub count: u32,
}

/// What the scan of a request's text found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub detections: Vec<Detection>,
    /// The scan did not finish (a detector failed or the time bound passed): the request is
    /// taken as restricted, the highest class.
    pub incomplete: bool,
}

/// The detector id a failed or unfinished scan is recorded under.
pub const SCAN_INCOMPLETE: &str = "scan-incomplete";

/// Whether a route acts on what the scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InferenceMode {
    /// The effective class is max(declared, inferred).
    #[default]
    Enforce,
    /// The decision and the audit record what would have been raised; the declared class
    /// governs.
    Report,
    /// Not scanned for this route's decisions.
    Off,
}

impl InferenceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InferenceMode::Enforce => "enforce",
            InferenceMode::Report => "report",
            InferenceMode::Off => "off",
        }
    }
}

/// The policy's floors: by category or detector id, and per tenant additions (which only
/// raise).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Floors {
    /// Category name or detector id → floor; a detector's own entry wins over its category's.
    pub floors: BTreeMap<String, DataClass>,
    /// Tenant → (category or detector id → floor), applied only where it raises.
    pub tenants: BTreeMap<String, BTreeMap<String, DataClass>>,
}

impl Floors {
    /// The policy's floor for `name` (a detector id or a category name) of `category`, for any
    /// tenant: its own entry, else its category's, else the category's default.
    pub fn base(&self, name: &str, category: Category) -> DataClass {
        pick(&self.floors, name, category).unwrap_or_else(|| category.default_floor())
    }

    /// The floor one detection sets for `tenant`.
    pub fn floor(&self, tenant: &str, d: &Detection) -> DataClass {
        let base = self.base(d.detector, d.category);
        match self
            .tenants
            .get(tenant)
            .and_then(|t| pick(t, d.detector, d.category))
        {
            Some(t) => base.max(t),
            None => base,
        }
    }

    /// The class the findings set for `tenant`, if any: the highest floor of what was found,
    /// restricted for an unfinished scan.
    pub fn inferred(&self, tenant: &str, f: &Findings) -> Option<DataClass> {
        if f.incomplete {
            return Some(DataClass::Restricted);
        }
        f.detections.iter().map(|d| self.floor(tenant, d)).max()
    }
}

/// A table's entry for `name`, else for its category.
fn pick(t: &BTreeMap<String, DataClass>, name: &str, category: Category) -> Option<DataClass> {
    t.get(name).or_else(|| t.get(category.as_str())).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(detector: &'static str, category: Category) -> Findings {
        Findings {
            detections: vec![Detection {
                detector,
                category,
                count: 1,
            }],
            incomplete: false,
        }
    }

    #[test]
    fn floors_by_default_by_category_by_detector_and_tenants_only_raise() {
        let mut f = Floors::default();
        let email = found("email", Category::Email);
        assert_eq!(f.inferred("t", &email), Some(DataClass::Internal));
        f.floors.insert("email".into(), DataClass::Confidential);
        assert_eq!(f.inferred("t", &email), Some(DataClass::Confidential));
        f.floors.insert("secret".into(), DataClass::Restricted);
        f.floors.insert("jwt".into(), DataClass::Internal);
        assert_eq!(
            f.inferred("t", &found("jwt", Category::Secret)),
            Some(DataClass::Internal),
            "a detector's own entry wins over its category's"
        );
        // a tenant's entry may raise, never lower
        f.tenants.insert(
            "bank".into(),
            BTreeMap::from([
                ("jwt".into(), DataClass::Restricted),
                ("email".into(), DataClass::Public),
            ]),
        );
        assert_eq!(
            f.inferred("bank", &found("jwt", Category::Secret)),
            Some(DataClass::Restricted)
        );
        assert_eq!(f.inferred("bank", &email), Some(DataClass::Confidential));
        assert_eq!(f.inferred("t", &Findings::default()), None);
        let incomplete = Findings {
            incomplete: true,
            ..Findings::default()
        };
        assert_eq!(f.inferred("t", &incomplete), Some(DataClass::Restricted));
    }
}
