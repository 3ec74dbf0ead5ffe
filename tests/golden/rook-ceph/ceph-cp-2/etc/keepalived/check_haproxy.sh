#!/bin/bash
# Managed by kubeforge. keepalived keeps the VIP here only while HAProxy runs and its
# apiserver frontend accepts connections.
systemctl is-active --quiet haproxy || exit 1
exec timeout 2 bash -c '</dev/tcp/127.0.0.1/8443'
