//! One POP3 client connection: the pre-auth dialogue, the login, `+OK`, then
//! the relay.

use std::sync::Arc;

use mailgate_config::Protocol;

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
        max_line: gw.max_line,
        max_failures: gw.max_failures,
        stls: setup.starttls.is_some(),
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
                    Protocol::Pop3,
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
    let residual = m.into_residual();
    relay_after_login(
        tally,
        client,
        PreAuth::success_reply(),
        residual,
        up.stream,
        &up.leftover,
    )
    .await;
}
