//! One IMAP client connection: the pre-auth dialogue, the login, then the
//! relay.

use std::sync::Arc;

use mailgate_config::Protocol;

use super::capabilities;
use super::preauth::{Options, PreAuth};
use super::upstream;
use crate::login;
use crate::server::Context;
use crate::session::{PreAuth as _, Setup, drive, relay_after_login};
use crate::tls::ClientStream;

pub async fn serve(client: ClientStream, setup: Setup, ctx: Arc<Context>) {
    let config = ctx.config();
    let gw = &config.gateway;
    let mut m = PreAuth::new(Options {
        hostname: gw.hostname.clone(),
        limits: mailgate_proto::imap::Limits {
            max_line: gw.max_line,
            max_literal: u32::try_from(gw.max_literal).unwrap_or(u32::MAX),
            max_message: 2 * (gw.max_line + gw.max_literal),
        },
        max_failures: gw.max_failures,
        max_tag: gw.max_tag,
        starttls: setup.starttls.is_some(),
        auth_before_tls: setup.auth_before_tls,
        tls: setup.tls,
    });
    let who = setup.client;
    let tally = setup.tally;
    let ctx2 = ctx.clone();
    let logged_in = drive(
        client,
        &mut m,
        gw.preauth_timeout,
        setup.starttls,
        |_, user, password| {
            let ctx = ctx2.clone();
            async move {
                login::login(
                    &ctx,
                    Protocol::Imap,
                    &user,
                    &password,
                    who,
                    |a| async move { upstream::login(&a).await },
                )
                .await
            }
        },
    )
    .await;
    let Some((client, up)) = logged_in else {
        return;
    };
    let tag = m.pending_tag().unwrap_or("*").to_owned();
    let ok = match &up.capabilities {
        Some(c) => format!(
            "{tag} OK [CAPABILITY {}] Logged in\r\n",
            capabilities::post_login(c)
        ),
        None => format!("{tag} OK Logged in\r\n"),
    };
    let residual = m.into_residual();
    relay_after_login(
        tally,
        client,
        ok.as_bytes(),
        residual,
        up.stream,
        &up.leftover,
    )
    .await;
}
