//! Checksums and shapes that tell real identifiers from look-alikes: Luhn and the card brands'
//! number ranges (so an order id of 16 digits is not a card), the IBAN's mod-97 check, the US
//! SSN's reserved ranges.

/// The length of the separator between digit groups that `text` starts with, 0 if none: a
/// space, a tab, a dash, or a no-break space (U+00A0, as UTF-8 `C2 A0` or as the Latin-1 byte
/// `A0`, which valid UTF-8 never has after a digit). `.` and `/` are not separators: dates,
/// versions, addresses and paths are written with them.
pub fn separator(text: &[u8]) -> usize {
    match text {
        [b' ' | b'\t' | b'-' | 0xA0, ..] => 1,
        [0xC2, 0xA0, ..] => 2,
        _ => 0,
    }
}

/// The digits of `text`, ignoring [`separator`]s; `None` if anything else is in it.
pub fn digits(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        if b.is_ascii_digit() {
            out.push(b - b'0');
            i += 1;
        } else {
            match separator(&text[i..]) {
                0 => return None,
                len => i += len,
            }
        }
    }
    Some(out)
}

/// The Luhn checksum (ISO/IEC 7812-1) holds.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let twice = d * 2;
                if twice > 9 { twice - 9 } else { twice }
            } else {
                d
            }
        })
        .sum();
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// The brand whose number ranges and lengths `digits` fits (Visa, Mastercard, Amex, Discover,
/// JCB, Diners), if any.
pub fn card_brand(digits: &[u8]) -> Option<&'static str> {
    let prefix = |n: usize| {
        digits
            .iter()
            .take(n)
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let len = digits.len();
    let brand = match (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6)) {
        // Visa issues 13, 16 and 19 digits; its ranges are documented for 13 to 19.
        (4, ..) if (13..=19).contains(&len) => "visa",
        (_, 51..=55, ..) if len == 16 => "mastercard",
        (.., 2221..=2720, _) if len == 16 => "mastercard",
        (_, 34 | 37, ..) if len == 15 => "amex",
        (.., 6011, _) if (16..=19).contains(&len) => "discover",
        (_, 65, ..) if (16..=19).contains(&len) => "discover",
        (_, _, 644..=649, ..) if (16..=19).contains(&len) => "discover",
        (.., 622_126..=622_925) if (16..=19).contains(&len) => "discover",
        (.., 3528..=3589, _) if (16..=19).contains(&len) => "jcb",
        (_, _, 300..=305, ..) if (14..=19).contains(&len) => "diners",
        (.., 3095, _) if (14..=19).contains(&len) => "diners",
        (_, 36 | 38 | 39, ..) if (14..=19).contains(&len) => "diners",
        _ => return None,
    };
    Some(brand)
}

/// A payment card number: a known brand's range and length, and a valid Luhn checksum. (No
/// allocation: body scans confirm thousands of candidates.)
pub fn card_number(text: &[u8]) -> bool {
    let mut buffer = [0u8; 19];
    let (mut len, mut i) = (0, 0);
    while let Some(&b) = text.get(i) {
        if b.is_ascii_digit() && len < buffer.len() {
            buffer[len] = b - b'0';
            len += 1;
            i += 1;
        } else {
            match separator(&text[i..]) {
                0 => return false,
                sep => i += sep,
            }
        }
    }
    let d = &buffer[..len];
    card_brand(d).is_some() && luhn(d)
}

/// An IBAN (ISO 13616): country letters, check digits, 11-30 alphanumerics (spaces allowed
/// between groups), and the mod-97 remainder of the rearranged number is 1.
pub fn iban(text: &[u8]) -> bool {
    let compact: Vec<u8> = text.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder = 0u32;
    for &b in rearranged {
        let value = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// A US Social Security number `AAA-GG-SSSS` outside the never-issued ranges (area 000, 666,
/// 900-999; group 00; serial 0000).
pub fn us_ssn(text: &[u8]) -> bool {
    let Some(d) = digits(text) else {
        return false;
    };
    if d.len() != 9 {
        return false;
    }
    let n = |r: std::ops::Range<usize>| d[r].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let (area, group, serial) = (n(0..3), n(3..5), n(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_pass_luhn_and_a_brand_range() {
        for card in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555555555554444",
            "2223003122003222",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "36227206271667",
            "4111\t1111\t1111\t1111",
            "4111\u{a0}1111\u{a0}1111\u{a0}1111",
            "4111111111111111110", // Visa, 19 digits
            "41111111111111113",   // Visa, 17 digits
            "30950000000000",      // Diners 3095
        ] {
            assert!(card_number(card.as_bytes()), "{card}");
        }
        for not_card in [
            "4111111111111112",                         // Luhn fails
            "1234567812345670",                         // Luhn holds, no brand starts with 1
            "9999999999999995",                         // no brand
            "41111111111111",                           // Visa prefix, wrong length
            "4111 1111 1111 111a",                      // not digits
            "4111.1111.1111.1111",                      // dots are no separators
            "4111/1111/1111/1111",                      // nor are slashes
            "4111\u{2007}1111\u{2007}1111\u{2007}1111", // nor other spaces
        ] {
            assert!(!card_number(not_card.as_bytes()), "{not_card}");
        }
        // A no-break space in Latin-1 text.
        assert!(card_number(b"4111\xA01111\xA01111\xA01111"));
        assert!(!card_number(b"4111\xC21111\xC21111\xC21111"));
    }

    #[test]
    fn ibans_pass_mod_97() {
        assert!(iban(b"GB82 WEST 1234 5698 7654 32"));
        assert!(iban(b"DE89370400440532013000"));
        assert!(iban(b"FR1420041010050500013M02606"));
        assert!(!iban(b"GB82 WEST 1234 5698 7654 33"));
        assert!(!iban(b"GB82"));
        assert!(!iban(b"gb82west12345698765432"));
    }

    #[test]
    fn ssns_outside_reserved_ranges() {
        assert!(us_ssn(b"123-45-6789"));
        assert!(us_ssn(b"123 45\t6789"));
        assert!(us_ssn("123\u{a0}45\u{a0}6789".as_bytes()));
        assert!(!us_ssn(b"123.45.6789"));
        for bad in [
            "000-45-6789",
            "666-45-6789",
            "900-45-6789",
            "123-00-6789",
            "123-45-0000",
        ] {
            assert!(!us_ssn(bad.as_bytes()), "{bad}");
        }
    }
}
