//! Emails: rendering an [`OrderEmail`], or an account email (a password-reset or verification
//! link), as text and HTML (templates in `templates/email/`, HTML auto-escaped), money formatting from minor units, and the [`Mailer`] that sends them
//! (SMTP through lettre, or `.eml` files in a folder).
//!
//! minijinja rather than `format!`: the HTML body loops over lines and branches on the kind, and a
//! template engine that escapes by file name makes it impossible to forget escaping a product
//! name or an address a customer typed.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::value::Serde;
use minijinja::{Environment, context};
use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

use super::outbox::{AccountEmailKind, OrderEmail, OrderEmailKind};
use crate::config::{EmailBackend, Settings};

/// Why an email could not be built or sent.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// Worth trying again later: a 4xx answer, a connection failure, a timeout, a disk error.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed as it stands: a 5xx answer, a malformed address, a template error.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Renders emails. Built once; templates are compiled at start, so a broken template fails the
/// start, not the first order.
pub struct EmailRenderer {
    env: Environment<'static>,
    from: Mailbox,
    /// The storefront the account emails link to, without a trailing slash.
    link_base_url: String,
}

/// An account email as it is sent: to whom, which kind, and the token minted for it.
pub struct AccountMessage<'a> {
    pub kind: AccountEmailKind,
    pub email: &'a str,
    pub name: &'a str,
    pub token: &'a str,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// A rendered email, ready to be sent.
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl EmailRenderer {
    pub fn new(from: &str, link_base_url: &str) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.add_template(
            "account.txt",
            include_str!("../../templates/email/account.txt"),
        )?;
        env.add_template(
            "account.html",
            include_str!("../../templates/email/account.html"),
        )?;
        // The default callback escapes templates whose name ends in .html, and nothing else.
        env.add_template("order.txt", include_str!("../../templates/email/order.txt"))?;
        env.add_template(
            "order.html",
            include_str!("../../templates/email/order.html"),
        )?;
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("email.from {from:?} is not an address: {e}"))?;
        let link_base_url = link_base_url.trim_end_matches('/').to_owned();
        let uri: axum::http::Uri = link_base_url
            .parse()
            .map_err(|e| anyhow::anyhow!("email.link_base_url {link_base_url:?}: {e}"))?;
        // No character HTML would need escaped, so the links can go into an href as they are.
        if !matches!(uri.scheme_str(), Some("http" | "https"))
            || uri.query().is_some()
            || link_base_url.contains(['"', '\'', '<', '>', '&'])
        {
            anyhow::bail!(
                "email.link_base_url {link_base_url:?} must be an http(s) address without a query \
                 or any of \" ' < > &"
            );
        }
        Ok(Self {
            env,
            from,
            link_base_url,
        })
    }

    pub fn render(&self, email: &OrderEmail) -> Result<RenderedEmail, EmailError> {
        let money = |minor: i64| format_money(minor, &email.currency);
        let subject = match email.kind {
            OrderEmailKind::Paid => format!("Your order {} is confirmed", email.order_number),
            OrderEmailKind::Cancelled => format!("Your order {} was cancelled", email.order_number),
            OrderEmailKind::Refunded => format!("Your order {} was refunded", email.order_number),
        };
        #[derive(Serialize)]
        struct Line<'a> {
            name: &'a str,
            sku: &'a str,
            options: &'a str,
            quantity: i32,
            unit_price: String,
            line_total: String,
        }
        let lines: Vec<Line<'_>> = email
            .lines
            .iter()
            .map(|line| Line {
                name: &line.name,
                sku: &line.sku,
                options: &line.options,
                quantity: line.quantity,
                unit_price: money(line.unit_price),
                line_total: money(line.line_total),
            })
            .collect();
        let ctx = context! {
            subject => &subject,
            kind => email.kind.as_str(),
            order_number => &email.order_number,
            customer_name => &email.customer_name,
            lines => Serde(&lines),
            subtotal => money(email.subtotal),
            has_discount => email.discount_total != 0,
            discount_total => money(email.discount_total),
            total => money(email.total),
            address => Serde(&email.shipping_address),
        };
        self.render_pair("order", subject, ctx)
    }

    /// Renders `{name}.txt` and `{name}.html` with `ctx`.
    fn render_pair(
        &self,
        name: &str,
        subject: String,
        ctx: minijinja::Value,
    ) -> Result<RenderedEmail, EmailError> {
        let render = |file: String| {
            self.env
                .get_template(&file)
                .and_then(|template| template.render(&ctx))
                .map_err(|e| EmailError::Permanent(format!("rendering {file}: {e}")))
        };
        Ok(RenderedEmail {
            text: render(format!("{name}.txt"))?,
            html: render(format!("{name}.html"))?,
            subject,
        })
    }

    pub fn render_account(&self, email: &AccountMessage<'_>) -> Result<RenderedEmail, EmailError> {
        let (subject, page) = match email.kind {
            AccountEmailKind::PasswordReset => ("Reset your password", "reset-password"),
            AccountEmailKind::VerifyEmail => ("Confirm your email address", "verify-email"),
        };
        // The token is URL-safe base64 and the base has no character HTML escapes (checked in
        // `new`): the link is safe in an href as it is, where escaping would turn each `/` into
        // `&#x2f;`.
        let link = minijinja::Value::from_safe_string(format!(
            "{}/{page}?token={}",
            self.link_base_url, email.token
        ));
        let ctx = context! {
            subject => subject,
            kind => email.kind.as_str(),
            name => email.name,
            link => link,
            token => email.token,
            expires_at => email.expires_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        };
        self.render_pair("account", subject.to_owned(), ctx)
    }

    /// The MIME message of an account email.
    pub fn account_message(
        &self,
        message_id: Uuid,
        email: &AccountMessage<'_>,
    ) -> Result<Message, EmailError> {
        let rendered = self.render_account(email)?;
        self.envelope(message_id, email.name, email.email, rendered)
    }

    /// The MIME message for `email`, with `message_id` as its Message-ID (so a resend is
    /// recognisable in the customer's mailbox too).
    pub fn message(&self, message_id: Uuid, email: &OrderEmail) -> Result<Message, EmailError> {
        let rendered = self.render(email)?;
        self.envelope(
            message_id,
            &email.customer_name,
            &email.customer_email,
            rendered,
        )
    }

    fn envelope(
        &self,
        message_id: Uuid,
        name: &str,
        address: &str,
        rendered: RenderedEmail,
    ) -> Result<Message, EmailError> {
        let address = address
            .parse()
            .map_err(|e| EmailError::Permanent(format!("{address:?} is not an address: {e}")))?;
        let to = Mailbox::new(Some(name.to_owned()), address);
        Message::builder()
            .message_id(Some(format!("<{message_id}@shop.localhost>")))
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|e| EmailError::Permanent(format!("building the message: {e}")))
    }
}

/// Formats minor units for people: `$1,234.50`, `€9.99`, `¥500`, `12.345 KWD`.
pub fn format_money(minor: i64, currency: &str) -> String {
    let code = currency.to_ascii_uppercase();
    let exponent = match code.as_str() {
        // ISO 4217 currencies without minor units, and with three.
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale = 10u64.pow(exponent);
    let (major, fraction) = (abs / scale, abs % scale);
    let digits = major.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let amount = if exponent == 0 {
        grouped
    } else {
        format!("{grouped}.{fraction:0width$}", width = exponent as usize)
    };
    let symbol = match code.as_str() {
        "USD" => Some("$"),
        "EUR" => Some("€"),
        "GBP" => Some("£"),
        "JPY" => Some("¥"),
        _ => None,
    };
    match symbol {
        Some(symbol) => format!("{sign}{symbol}{amount}"),
        None => format!("{sign}{amount} {code}"),
    }
}

/// Where emails go: an SMTP server, or `.eml` files in a folder (the no-setup default).
#[derive(Clone)]
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(PathBuf),
}

impl Mailer {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        Ok(match settings.email.backend {
            EmailBackend::File => Self::File(settings.email.file_dir.clone()),
            EmailBackend::Smtp => {
                // smtp:// is plain (a local relay), smtp://...?tls=required is STARTTLS, smtps:// is
                // implicit TLS; credentials may be in the URL.
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(
                    settings.smtp.url.expose_secret(),
                )
                .map_err(|e| anyhow::anyhow!("smtp.url: {e}"))?
                .timeout(Some(Duration::from_secs(settings.smtp.timeout_secs)))
                .build();
                Self::Smtp(transport)
            }
        })
    }

    pub async fn send(&self, message_id: Uuid, message: &Message) -> Result<(), EmailError> {
        match self {
            Self::Smtp(transport) => match transport.send(message.clone()).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(EmailError::Permanent(e.to_string())),
                Err(e) => Err(EmailError::Transient(e.to_string())),
            },
            Self::File(dir) => {
                let transient = |e: std::io::Error| EmailError::Transient(e.to_string());
                tokio::fs::create_dir_all(dir).await.map_err(transient)?;
                // Written aside and renamed, so a reader never sees half an email.
                let partial = dir.join(format!(".{message_id}.eml.partial"));
                tokio::fs::write(&partial, message.formatted())
                    .await
                    .map_err(transient)?;
                tokio::fs::rename(&partial, dir.join(format!("{message_id}.eml")))
                    .await
                    .map_err(transient)
            }
        }
    }

    /// Readiness: `None` when there is no server to check (file backend).
    pub async fn check(&self) -> Option<Result<(), String>> {
        match self {
            Self::Smtp(transport) => Some(match transport.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err("not answering".into()),
                Err(e) => Err(e.to_string()),
            }),
            Self::File(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::outbox::{OrderEmailLine, ShippingAddress};

    #[test]
    fn money_is_formatted_from_minor_units() {
        assert_eq!(format_money(123_456, "usd"), "$1,234.56");
        assert_eq!(format_money(5, "eur"), "€0.05");
        assert_eq!(format_money(-1999, "gbp"), "-£19.99");
        assert_eq!(format_money(500, "jpy"), "¥500");
        assert_eq!(format_money(12_345, "kwd"), "12.345 KWD");
        assert_eq!(format_money(100_000_000, "chf"), "1,000,000.00 CHF");
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let renderer =
            EmailRenderer::new("Shop <orders@shop.localhost>", "https://shop.example").unwrap();
        let email = OrderEmail {
            order_id: Uuid::nil(),
            order_number: "SO-1".into(),
            kind: OrderEmailKind::Paid,
            customer_email: "a@example.com".into(),
            customer_name: "Ann <b>".into(),
            lines: vec![OrderEmailLine {
                name: "Mug <script>".into(),
                sku: "MUG-1".into(),
                options: String::new(),
                quantity: 2,
                unit_price: 1250,
                line_total: 2500,
            }],
            subtotal: 2500,
            discount_total: 0,
            total: 2500,
            currency: "usd".into(),
            shipping_address: ShippingAddress {
                name: "Ann".into(),
                line1: "1 Main St".into(),
                line2: None,
                city: "Springfield".into(),
                postal_code: "12345".into(),
                country: "US".into(),
            },
        };
        let rendered = renderer.render(&email).unwrap();
        assert!(rendered.html.contains("Mug &lt;script&gt;"));
        assert!(!rendered.html.contains("<script>"));
        assert!(rendered.text.contains("2 x Mug <script>"));
        assert!(rendered.text.contains("Total:    $25.00"));
        assert!(rendered.html.contains("$12.50"));
    }

    #[test]
    fn account_emails_link_to_the_storefront_page_of_their_kind_and_escape_the_name() {
        let renderer =
            EmailRenderer::new("Shop <orders@shop.localhost>", "https://shop.example/").unwrap();
        let email = |kind| AccountMessage {
            kind,
            email: "a@example.com",
            name: "Ann <b>",
            token: "abc-_123",
            expires_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        let reset = renderer
            .render_account(&email(AccountEmailKind::PasswordReset))
            .unwrap();
        assert_eq!(reset.subject, "Reset your password");
        assert!(
            reset
                .text
                .contains("https://shop.example/reset-password?token=abc-_123")
        );
        assert!(reset.text.contains("until 2027-01-15 08:00 UTC"));
        assert!(reset.html.contains("Ann &lt;b&gt;"));
        let verify = renderer
            .render_account(&email(AccountEmailKind::VerifyEmail))
            .unwrap();
        assert_eq!(verify.subject, "Confirm your email address");
        assert!(
            verify
                .html
                .contains(r#"href="https://shop.example/verify-email?token=abc-_123""#)
        );
    }
}
