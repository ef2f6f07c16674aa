# mailgate in a container: a multi-stage build, run as a non-root user.
#
#   docker build -t mailgate .
#   docker run -d --name mailgate \
#     -v /srv/mailgate/etc:/etc/mailgate:ro -v mailgate-state:/var/lib/mailgate \
#     -p 993:1993 -p 465:1465 -p 9925:9925 mailgate
#
# /etc/mailgate/mailgate.toml is the configuration (listeners must bind
# 0.0.0.0 inside the container, with TLS); tokens and the generated
# certificate live in the /var/lib/mailgate volume. See docs/gateway-box.md.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mailgate --bin mailgate \
    && mkdir -p /out/etc/mailgate /out/var/lib/mailgate \
    && cp target/release/mailgate /out/mailgate \
    && /out/mailgate man > /out/mailgate.1

# glibc, CA certificates and a "nonroot" user (65532), nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mailgate /usr/local/bin/mailgate
COPY --from=build /out/mailgate.1 /usr/local/share/man/man1/mailgate.1
COPY --from=build --chown=65532:65532 /out/etc/mailgate /etc/mailgate
COPY --from=build --chown=65532:65532 /out/var/lib/mailgate /var/lib/mailgate
ENV MAILGATE_CONFIG=/etc/mailgate/mailgate.toml \
    MAILGATE_GATEWAY__STATE_DIR=/var/lib/mailgate
USER 65532:65532
VOLUME ["/etc/mailgate", "/var/lib/mailgate"]
EXPOSE 1143 1993 1587 1465 1110 1995 9925
ENTRYPOINT ["/usr/local/bin/mailgate"]
CMD ["run"]
