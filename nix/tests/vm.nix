# NixOS VM test of nix/module.nix: one machine with the module enabled and two agents; tuwunel
# in its container, hive-matrix as its unprivileged user. It checks what an operator relies on:
# the agents' token files (0600) and daemon restarts, the sign-up token (0600) and a human
# sign-up with it, the Space and hive-chat with both agents joined, a third agent that appears
# while the service runs, and an answer to `!hive status` in the control room.
#
# Run it from the repository root, on Linux with KVM, with a nixpkgs that has
# services.matrix-tuwunel (NixOS 25.11 or later):
#
#   nix-build nix/tests/vm.nix                                  # nixpkgs from <nixpkgs> (NIX_PATH)
#   nix-build nix/tests/vm.nix --arg pkgs 'import /path/to/nixpkgs { }'
#
# Interactively: `$(nix-build nix/tests/vm.nix -A driverInteractive)/bin/nixos-test-driver`.
{
  pkgs ? import <nixpkgs> { },
}:
pkgs.testers.runNixOSTest {
  name = "hive-matrix";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ ../module.nix ];

      virtualisation.memorySize = 2048;

      services.hyperhive.domain = "hive.test";
      services.hyperhive.matrix = {
        enable = true;
        # No nginx: the test talks to tuwunel on 127.0.0.1:8008 directly.
        gatewayHost = null;
        appservice.operators = [ "@alice:hive.test" ];
      };

      # Started by the test script once the operator has an account, as on a first deployment
      # where the operator signs up right after the homeserver comes up: hive-matrix invites the
      # operators when it creates the rooms.
      systemd.services.hive-matrix.wantedBy = lib.mkForce [ ];

      # Two agents from the start (a third one is created by the test script).
      systemd.tmpfiles.rules = [
        "d /var/lib/hyperhive/agents 0755 root root -"
        "d /var/lib/hyperhive/agents/alpha 0755 root root -"
        "d /var/lib/hyperhive/agents/alpha/state 0700 root root -"
        "d /var/lib/hyperhive/agents/beta 0755 root root -"
        "d /var/lib/hyperhive/agents/beta/state 0700 root root -"
      ];

      # Stands in for an agent's hive-matrix-daemon: counts its (re)starts, which hive-matrix
      # triggers through the module's polkit rule after writing a token.
      systemd.services."hive-matrix-daemon@" = {
        description = "Stand-in for the hive-matrix-daemon of agent %i";
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${pkgs.runtimeShell} -c 'echo started >> /run/hive-matrix-daemon-%i.starts'";
        };
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.acl
      ];
    };

  testScript = ''
    import json
    import shlex
    import time

    HS = "http://127.0.0.1:8008"
    DOMAIN = "hive.test"
    AGENTS = "/var/lib/hyperhive/agents"
    STATE = "/var/lib/hyperhive/matrix"


    def api(method, path, body=None, token=None):
        """One client-server API request; returns (HTTP status, parsed JSON body)."""
        cmd = f"curl -s -o /tmp/body -w '%{{http_code}}' -X {method} {shlex.quote(HS + path)}"
        if token:
            cmd += f" -H {shlex.quote('Authorization: Bearer ' + token)}"
        if body is not None:
            cmd += f" -H 'Content-Type: application/json' --data {shlex.quote(json.dumps(body))}"
        status = int(machine.succeed(cmd))
        text = machine.succeed("cat /tmp/body")
        return status, (json.loads(text) if text.strip() else {})


    def ok(method, path, body=None, token=None):
        status, reply = api(method, path, body, token)
        assert status == 200, f"{method} {path}: {status} {reply}"
        return reply


    def mode_owner(path):
        return machine.succeed(f"stat -c '%a %U' {shlex.quote(path)}").strip()


    def joined(room, token):
        return set(ok("GET", f"/_matrix/client/v3/rooms/{room}/joined_members", token=token)["joined"])


    start_all()
    machine.wait_for_unit("container@hive-matrix.service")
    machine.wait_until_succeeds(f"curl -sf {HS}/_matrix/client/versions", timeout=300)

    with subtest("the sign-up token exists, 0600 root, and tuwunel accepts a sign-up with it"):
        assert mode_owner("/var/lib/hyperhive/matrix-register-token") == "600 root"
        signup_token = machine.succeed("cat /var/lib/hyperhive/matrix-register-token").strip()
        assert len(signup_token) == 64
        account = {"username": "alice", "password": "correct horse battery staple"}
        status, reply = api("POST", "/_matrix/client/v3/register", account)
        assert status == 401 and "session" in reply, f"expected an auth flow: {status} {reply}"
        stages = reply["flows"][0]["stages"]
        assert "m.login.registration_token" in stages, stages
        for stage in stages:
            auth = {"type": stage, "session": reply["session"]}
            if stage == "m.login.registration_token":
                auth["token"] = signup_token
            status, reply = api("POST", "/_matrix/client/v3/register", {**account, "auth": auth})
        assert status == 200, f"sign-up failed: {status} {reply}"
        alice = reply["access_token"]
        assert reply["user_id"] == f"@alice:{DOMAIN}"
        # A wrong token is refused.
        other = {"username": "mallory", "password": "x" * 16}
        status, reply = api("POST", "/_matrix/client/v3/register", other)
        wrong = {"type": "m.login.registration_token", "token": "0" * 64, "session": reply.get("session")}
        status, reply = api("POST", "/_matrix/client/v3/register", {**other, "auth": wrong})
        assert status in (401, 403), f"a wrong sign-up token was accepted: {status} {reply}"

    with subtest("the registration is readable by the service's group only"):
        assert mode_owner("/var/lib/hyperhive/matrix-appservice/registration.yaml").split()[0] in ("600", "640")

    machine.succeed("systemctl start hive-matrix.service")

    with subtest("hive-matrix is ready and runs as its own user"):
        machine.wait_for_unit("hive-matrix.service")
        machine.wait_until_succeeds("curl -sf http://127.0.0.1:9010/health | jq -e '.ready == true'", timeout=180)
        assert machine.succeed("systemctl show -P User hive-matrix.service").strip() == "hive-matrix"
        assert mode_owner("/var/lib/hyperhive/matrix-appservice/registration.yaml") == "640 root"

    with subtest("both agents get their token file, 0600, and their daemon restarted"):
        for name in ["alpha", "beta"]:
            token_file = f"{AGENTS}/{name}/state/matrix-token"
            machine.wait_until_succeeds(f"test -s {token_file}", timeout=180)
            assert mode_owner(token_file) == "600 hive-matrix", mode_owner(token_file)
            token = machine.succeed(f"cat {token_file}").strip()
            me = ok("GET", "/_matrix/client/v3/account/whoami", token=token)
            assert me["user_id"] == f"@agent-{name}:{DOMAIN}", me
            machine.wait_until_succeeds(f"test -s /run/hive-matrix-daemon-{name}.starts", timeout=60)

    with subtest("the Space and hive-chat exist, with both agents joined"):
        machine.wait_until_succeeds(f"test -s {STATE}/space-id && test -s {STATE}/hive-chat-id", timeout=120)
        space = machine.succeed(f"cat {STATE}/space-id").strip()
        chat = machine.succeed(f"cat {STATE}/hive-chat-id").strip()
        agents = {f"@agent-alpha:{DOMAIN}", f"@agent-beta:{DOMAIN}"}
        for room in [space, chat]:
            for _ in range(60):
                status, _reply = api("POST", f"/_matrix/client/v3/join/{room}", {}, alice)
                if status == 200:
                    break
                time.sleep(2)
            assert status == 200, f"alice cannot join {room}: {status}"
        for _ in range(90):
            if agents <= joined(space, alice) and agents <= joined(chat, alice):
                break
            time.sleep(2)
        assert agents <= joined(space, alice), joined(space, alice)
        assert agents <= joined(chat, alice), joined(chat, alice)
        state = ok("GET", f"/_matrix/client/v3/rooms/{space}/state/m.room.create", token=alice)
        assert state.get("type") == "m.space", state

    with subtest("an operator's !hive status is answered"):
        machine.wait_until_succeeds(f"test -s {STATE}/control-room-id", timeout=120)
        control = machine.succeed(f"cat {STATE}/control-room-id").strip()
        for _ in range(60):
            status, _reply = api("POST", f"/_matrix/client/v3/join/{control}", {}, alice)
            if status == 200:
                break
            time.sleep(2)
        assert status == 200, f"alice cannot join the control room: {status}"
        sent = ok("PUT", f"/_matrix/client/v3/rooms/{control}/send/m.room.message/status1", {"msgtype": "m.text", "body": "!hive status"}, alice)
        answer: dict | None = None
        for _ in range(60):
            messages = ok("GET", f"/_matrix/client/v3/rooms/{control}/messages?dir=b&limit=50", token=alice)["chunk"]
            for event in messages:
                content = event.get("content", {})
                reply_to = content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
                if event.get("sender") == f"@hive:{DOMAIN}" and reply_to == sent["event_id"]:
                    answer = content
            if answer:
                break
            time.sleep(2)
        assert answer is not None, "no answer to !hive status"
        assert answer["msgtype"] == "m.notice", answer
        assert "formatted_body" in answer, answer

    with subtest("an agent that appears while the service runs gets access, a token and a restart"):
        machine.succeed(f"mkdir -p {AGENTS}/gamma/state && chmod 0700 {AGENTS}/gamma/state")
        machine.wait_until_succeeds(f"getfacl -p {AGENTS}/gamma/state | grep -q '^user:hive-matrix:rwx'", timeout=60)
        # hive-matrix may have tried before the ACL was there (docs/nixos.md); a sync retries.
        ok("PUT", f"/_matrix/client/v3/rooms/{control}/send/m.room.message/sync1", {"msgtype": "m.text", "body": "!hive sync"}, alice)
        machine.wait_until_succeeds(f"test -s {AGENTS}/gamma/state/matrix-token", timeout=120)
        assert mode_owner(f"{AGENTS}/gamma/state/matrix-token") == "600 hive-matrix"
        machine.wait_until_succeeds("test -s /run/hive-matrix-daemon-gamma.starts", timeout=60)

    with subtest("the service cannot restart anything else, nor write outside its paths"):
        machine.fail("runuser -u hive-matrix -- systemctl restart container@hive-matrix.service")
        machine.fail("runuser -u hive-matrix -- systemctl stop hive-matrix-daemon@alpha.service")
        machine.succeed("runuser -u hive-matrix -- systemctl restart hive-matrix-daemon@alpha.service")
        machine.fail("runuser -u hive-matrix -- touch /var/lib/hyperhive/agents/alpha/other")
        machine.fail("runuser -u hive-matrix -- cat /var/lib/hyperhive/matrix-register-token")
  '';
}
