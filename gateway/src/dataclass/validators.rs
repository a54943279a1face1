//! Checks a regular expression cannot make: checksums, number-allocation rules, a token's
//! decoded header, entropy, and placeholders that documentation uses in place of real values.
//! Each takes the matched bytes (already NFKC-normalised) and says whether they are the thing.

use base64::Engine;

/// The ASCII digits of `s`, in order (separators dropped).
pub fn digits(s: &[u8]) -> Vec<u8> {
    s.iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect()
}

/// The Luhn checksum (payment cards).
pub fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn prefix(d: &[u8], n: usize) -> u32 {
    d.iter().take(n).fold(0, |a, &x| a * 10 + u32::from(x))
}

/// A payment card number: 12 to 19 digits in an issuer's range, Luhn-valid, not one repeated
/// digit.
pub fn card(s: &[u8]) -> bool {
    let d = digits(s);
    if !(12..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let (p1, p2, p3, p4) = (prefix(&d, 1), prefix(&d, 2), prefix(&d, 3), prefix(&d, 4));
    let issuer = match d.len() {
        // Visa 13/16/19; Mastercard 51–55 and 2221–2720; Discover 6011, 644–649, 65;
        // JCB 3528–3589; UnionPay 62; Maestro 50, 56–69 (12–19 digits)
        _ if p1 == 4 && matches!(d.len(), 13 | 16 | 19) => true,
        16 if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => true,
        // American Express 34, 37: 15 digits
        15 if p2 == 34 || p2 == 37 => true,
        // Diners Club 300–305, 36, 38, 39: 14 digits (16 when co-branded)
        14 if (300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39) => true,
        16..=19 if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => true,
        // JCB 3528–3589 (numbers issued in the 35 block are read as JCB), UnionPay 62
        16..=19 if p2 == 35 || p2 == 62 => true,
        // legacy 15-digit JCB
        15 if p4 == 2131 || p4 == 1800 => true,
        // Maestro's 0604 block
        12..=19 if p4 == 604 && d[0] == 0 => true,
        _ if p2 == 50 || (56..=69).contains(&p2) => true,
        _ => false,
    };
    issuer && luhn(&d)
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

/// An IBAN: a registered country, that country's length and the mod-97 check. A match that
/// ran on into the following word is cut to the country's length first.
pub fn iban(s: &[u8]) -> bool {
    let compact: Vec<u8> = s
        .iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(u8::to_ascii_uppercase)
        .collect();
    let Some(country) = compact.get(..2) else {
        return false;
    };
    let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| c.as_bytes() == country) else {
        return false;
    };
    let Some(iban) = compact.get(..len) else {
        return false;
    };
    // cut only where the text breaks (a space): a longer unbroken run (a hash, a word) is not
    // an IBAN with something after it
    if compact.len() > len {
        let mut seen = 0;
        let cut = s.iter().position(|b| {
            seen += usize::from(b.is_ascii_alphanumeric());
            seen == len
        });
        if cut
            .and_then(|i| s.get(i + 1))
            .is_some_and(u8::is_ascii_alphanumeric)
        {
            return false;
        }
    }
    if !iban[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    // move the first four characters to the end, letters as 10..35, then mod 97
    let mut rem = 0u32;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        let v = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// A US Social Security number: area not 000, 666 or 900–999; group not 00; serial not 0000;
/// not one of the numbers published as examples.
pub fn ssn(s: &[u8]) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let (area, group, serial) = (prefix(&d, 3), prefix(&d[3..], 2), prefix(&d[5..], 4));
    let published = matches!((area, group, serial), (78, 5, 1120) | (123, 45, 6789));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !published
}

/// A phone number: `min..=max` digits, not one repeated digit, and not the North American
/// numbers reserved for fiction (555-0100 to 555-0199).
pub fn phone(s: &[u8], min: usize, max: usize) -> bool {
    let d = digits(s);
    if !(min..=max).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let n = d.len();
    let fictional = n >= 7 && prefix(&d[n - 7..], 3) == 555 && prefix(&d[n - 4..], 2) == 1;
    !fictional
}

/// A North American number: area and exchange codes start 2–9 and are not N11.
pub fn nanp(s: &[u8]) -> bool {
    let mut d = digits(s);
    if d.len() == 11 && d[0] == 1 {
        d.remove(0);
    }
    if d.len() != 10 {
        return false;
    }
    let ok = |c: &[u8]| c[0] >= 2 && !(c[1] == 1 && c[2] == 1);
    let fictional = prefix(&d[3..], 3) == 555 && prefix(&d[6..], 2) == 1;
    ok(&d[..3]) && ok(&d[3..6]) && !fictional
}

/// Reserved example domains (RFC 2606 and 6761): documentation's addresses, not anyone's.
pub fn email(s: &[u8]) -> bool {
    let Some(at) = s.iter().rposition(|&b| b == b'@') else {
        return false;
    };
    let domain = String::from_utf8_lossy(&s[at + 1..]).to_ascii_lowercase();
    let reserved = ["example.com", "example.org", "example.net"]
        .iter()
        .any(|d| domain == *d || domain.ends_with(&format!(".{d}")))
        || [".example", ".test", ".invalid", ".localhost", ".local"]
            .iter()
            .any(|t| domain.ends_with(t));
    !reserved && domain.contains('.')
}

/// Shannon entropy in bits per byte.
pub fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Values documentation writes where a real secret would go: templating, angle brackets,
/// masks, repeated characters, and the usual words.
pub fn placeholder(v: &[u8]) -> bool {
    let t = String::from_utf8_lossy(v).to_ascii_lowercase();
    let t = t.trim_matches(|c: char| c == '"' || c == '\'' || c == '`');
    let templated = (t.starts_with("${") || t.starts_with("{{") || t.starts_with('<'))
        || t.starts_with('$')
        || t.starts_with('%') && t.ends_with('%');
    let masked = t
        .chars()
        .all(|c| matches!(c, '*' | 'x' | '.' | '-' | '_' | '#'));
    let repeated = t.chars().all(|c| t.starts_with(c));
    const WORDS: &[&str] = &[
        "password",
        "passwd",
        "changeme",
        "change_me",
        "secret",
        "example",
        "placeholder",
        "redacted",
        "dummy",
        "sample",
        "your",
        "my_",
        "xxxx",
        "todo",
        "none",
        "null",
        "true",
        "false",
        "undefined",
        "hunter2",
        "getpass",
        "os.environ",
        "env(",
        "process.env",
        "input(",
    ];
    templated || masked || repeated || WORDS.iter().any(|w| t.contains(w))
}

/// A JSON Web Token: its header decodes (base64url) to a JSON object naming `alg`.
pub fn jwt(s: &[u8]) -> bool {
    let Some(header) = s.split(|&b| b == b'.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.strip_suffix(b"=").unwrap_or(header))
    else {
        return false;
    };
    matches!(
        serde_json::from_slice::<serde_json::Value>(&bytes),
        Ok(serde_json::Value::Object(m)) if m.contains_key("alg")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_luhn_valid_numbers_in_an_issuers_range() {
        for good in [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "3400 000000 00009",
            "6011000000000004",
            "3530111333300000",
            "2223000048400011",
            "30569309025904",
            "6759649826438453",
            "213120107337494",
            "3519810952179315",
        ] {
            assert!(card(good.as_bytes()), "{good}");
        }
        for bad in [
            "4111 1111 1111 1112", // Luhn
            "1234567812345670",    // no issuer 1
            "0000000000000000",    // repeated
            "41111111111",         // too short
            "9111111111111111",
        ] {
            assert!(!card(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ibans_check_their_country_length_and_mod_97() {
        for good in [
            "GB82 WEST 1234 5698 7654 32",
            "de89370400440532013000",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NL91ABNA0417164300",
            // a match that ran into the next word is cut at the country's length
            "GB82WEST12345698765432 THEN",
        ] {
            assert!(iban(good.as_bytes()), "{good}");
        }
        for bad in [
            "GB82 WEST 1234 5698 7654 33",
            "ZZ82WEST12345698765432",
            "GB82WEST1234",
            // an unbroken longer run (a hash) is not cut
            "GB82WEST12345698765432AB",
        ] {
            assert!(!iban(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ssns_follow_the_allocation_rules() {
        assert!(ssn(b"536-22-1234"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "536-00-1234",
            "536-22-0000",
            "123-45-6789",
            "078-05-1120",
        ] {
            assert!(!ssn(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn phones_and_emails_skip_fiction_and_reserved_domains() {
        assert!(nanp(b"(415) 867-2309"));
        assert!(nanp(b"+1 415 867 2309"));
        assert!(!nanp(b"(415) 555-0142"), "reserved for fiction");
        assert!(!nanp(b"(011) 867-2309"), "area code starting 0");
        assert!(!nanp(b"415-911-2309"), "N11 exchange");
        assert!(phone(b"+44 20 7946 0321", 8, 15));
        assert!(!phone(b"+1111111111", 8, 15));
        assert!(email(b"jane.doe@acme-corp.io"));
        assert!(!email(b"user@example.com"));
        assert!(!email(b"a@mail.example.org"));
        assert!(!email(b"dev@service.test"));
    }

    #[test]
    fn entropy_placeholders_and_jwts() {
        assert!(entropy(b"aaaaaaaa") < 0.01);
        assert!(entropy(b"q8Xz3Lm0Vt7Rk2Np") > 3.5);
        for p in [
            "${DB_PASSWORD}",
            "{{ secret }}",
            "<your-token>",
            "********",
            "xxxxxxxx",
            "changeme",
            "\"password123\"",
        ] {
            assert!(placeholder(p.as_bytes()), "{p}");
        }
        assert!(!placeholder(b"Tr0ub4dor&3x"));
        // {"alg":"HS256","typ":"JWT"}
        assert!(jwt(
            b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
        ));
        assert!(!jwt(
            b"eyJub3RhbGciOjF9.eyJzdWIiOiIxIn0.abcdefghijklmnopqrstu"
        ));
    }
}
