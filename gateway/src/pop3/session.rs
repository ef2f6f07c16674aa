//! One POP3 client connection: the pre-auth dialogue, the login, `+OK`, then
//! the relay.

use std::sync::Arc;

use super::preauth::{Options, PreAuth};
use super::upstream;
use crate::server::Context;
use crate::session::{Setup, serve_lines};
use crate::tls::ClientStream;

pub async fn serve(client: ClientStream, setup: Setup, ctx: Arc<Context>) {
    let config = ctx.config();
    let gw = &config.gateway;
    let m = PreAuth::new(Options {
        hostname: gw.hostname.clone(),
        max_line: gw.max_line,
        max_failures: gw.max_failures,
        stls: setup.starttls.is_some(),
        auth_before_tls: setup.auth_before_tls,
        tls: setup.tls,
    });
    serve_lines(client, setup, ctx, m, PreAuth::success_reply(), |_| {
        |a| async move { upstream::login(&a).await }
    })
    .await;
}
