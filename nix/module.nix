# NixOS module: tuwunel and hive-matrix together, under services.hyperhive.matrix.
#
# - tuwunel runs in the nixos-container `hive-matrix`, which shares the host network;
# - hive-matrix (the appservice) runs on the host, hardened, after the container;
# - secrets (the appservice registration, the sign-up token) are created on the host at
#   activation, never in the Nix store, and reach tuwunel through read-only bind mounts and
#   systemd credentials.
#
# Everything computable from the options lives in ./lib.nix (pure, tested without nixpkgs);
# this file only wires it into NixOS. See docs/nixos.md.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalAttrs
    optionalString
    types
    ;

  hlib = import ./lib.nix;
  defaults = hlib.defaults;

  top = config.services.hyperhive;
  cfg = top.matrix;
  as = cfg.appservice;

  # The domain may be unset; the assertions then say so instead of an evaluation error.
  domainSet = options.services.hyperhive.domain.isDefined;

  # The option values in the shape lib.nix takes.
  input = {
    domain = if domainSet then top.domain else null;
    inherit (cfg)
      serverName
      gatewayHost
      httpPort
      openFirewall
      trustedServers
      maxRequestSize
      registrationTokenFile
      ;
    appservice = {
      inherit (as)
        enable
        id
        port
        botLocalpart
        operators
        agentLocalpart
        agentNames
        restartCommand
        restartShell
        stateDir
        agentStateRoot
        registration
        settings
        ;
    };
    gui = { inherit (cfg.gui) enable; };
  };

  # No secrets in here (the tokens are in the registration file), so the store is fine.
  configFile = pkgs.writeText "hive-matrix-config.yaml" (builtins.toJSON (hlib.hiveMatrixConfig input));

  hostStateVersion = config.system.stateVersion;
  coreutils = "${pkgs.coreutils}/bin";

  # The sign-up token: written only when the file is missing or blank, always 0600 root (set
  # before writing, so the token is never readable by others). Written in place, not renamed,
  # because the file itself is bind mounted into the container.
  tokenSnippet = ''
    (
      set -eu
      f=${lib.escapeShellArg cfg.registrationTokenFile}
      d=$(${coreutils}/dirname "$f")
      [ -d "$d" ] || ${coreutils}/install -d -m 0755 -o root -g root "$d"
      if [ -L "$f" ]; then
        echo "hive-matrix: $f is a symlink; not writing the registration token through it" >&2
        exit 1
      fi
      if [ -e "$f" ]; then
        ${coreutils}/chown root:root "$f"
        ${coreutils}/chmod 0600 "$f"
      fi
      if ! [ -s "$f" ] || ! ${pkgs.gnugrep}/bin/grep -q '[^[:space:]]' "$f"; then
        tok=$(${coreutils}/od -An -N32 -tx1 /dev/urandom | ${coreutils}/tr -d ' \n')
        if [ "''${#tok}" -ne 64 ]; then
          echo "hive-matrix: could not generate a registration token" >&2
          exit 1
        fi
        (umask 077; printf '%s\n' "$tok" > "$f")
        echo "hive-matrix: generated a registration token in $f"
      fi
      ${coreutils}/chown root:root "$f"
      ${coreutils}/chmod 0600 "$f"
    )
  '';

  # The appservice registration, by the CLI itself: fresh 32-byte hex tokens the first time,
  # the existing tokens afterwards, written atomically; with the bare `{name}` template the agents
  # found on disk are listed too. Its directory is bind mounted read-only into the container.
  # Owner root, readable by the group of the unprivileged hive-matrix service (0750/0640).
  registrationSnippet = ''
    (
      set -eu
      reg=${lib.escapeShellArg as.registration}
      rd=$(${coreutils}/dirname "$reg")
      [ -d "$rd" ] || ${coreutils}/mkdir -p -m 0700 "$rd"
      ${coreutils}/chown root:root "$rd"
      ${coreutils}/chmod 0700 "$rd"
      ${lib.getExe cfg.package} registration --config ${configFile} --out "$reg" > /dev/null
      ${coreutils}/chown root:root "$reg"
      ${coreutils}/chmod 0600 "$reg"
      ${registrationAccess}
    )
  '';

  # Hands the registration to the service's group. At activation the group may not exist yet
  # (users created by userborn or systemd-sysusers), so the service does it again, privileged,
  # right before it starts (ExecStartPre=+).
  registrationAccess = ''
    if ${coreutils}/chgrp ${hlib.serviceUser} "$rd" "$reg" 2> /dev/null; then
      ${coreutils}/chmod 0750 "$rd"
      ${coreutils}/chmod 0640 "$reg"
    fi
  '';

  registrationAccessScript = pkgs.writeShellScript "hive-matrix-registration-access" ''
    set -eu
    reg=${lib.escapeShellArg as.registration}
    rd=$(${coreutils}/dirname "$reg")
    ${registrationAccess}
  '';

  # Re-applies the tmpfiles rules below the agents' root (the ACL grants among them). The path
  # unit fires when an agent dir appears, which is often a moment before its state/ does, and
  # nothing fires for the state/ itself: so wait a little for state/ dirs still missing, and
  # apply the rules again. Only tests paths; tmpfiles does the (symlink-safe) changes.
  agentAccessScript = pkgs.writeShellScript "hive-matrix-agent-access" ''
    set -u
    root=${lib.escapeShellArg as.agentStateRoot}
    ${systemdTmpfiles} --create --prefix="$root"
    for _ in $(${coreutils}/seq 30); do
      waiting=0
      for d in "$root"/*/; do
        if [ -d "$d" ] && ! [ -L "''${d%/}" ] && ! [ -e "''${d}state" ]; then waiting=1; fi
      done
      [ "$waiting" = 0 ] && break
      ${coreutils}/sleep 1
    done
    ${systemdTmpfiles} --create --prefix="$root"
  '';

  polkitRule = hlib.restartPolkitRule input;
  systemdTmpfiles = "${config.systemd.package}/bin/systemd-tmpfiles";

  guiConfig = pkgs.writeText "fluffychat-config.json" (
    builtins.toJSON { default_homeserver = cfg.gatewayHost; }
  );

  upstream = "http://127.0.0.1:${toString cfg.httpPort}";

  valid = hlib.failedAssertions input == [ ];
in
{
  options.services.hyperhive = {
    # Shared by the hyperhive modules. Declared here with a type only (no default, no
    # description) so that it merges with an identical declaration in another hyperhive
    # module; see docs/nixos.md.
    domain = mkOption { type = types.str; };

    matrix = {
      enable = mkEnableOption "the hive's Matrix homeserver (tuwunel) with the hive-matrix appservice";

      package = mkOption {
        type = types.package;
        default = pkgs.callPackage ./package.nix { };
        defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
        description = "The hive-matrix package.";
      };

      tuwunelPackage = mkOption {
        type = types.package;
        default = pkgs.matrix-tuwunel;
        defaultText = literalExpression "pkgs.matrix-tuwunel";
        description = "The tuwunel package run in the `hive-matrix` container.";
      };

      serverName = mkOption {
        type = types.str;
        default = if domainSet then top.domain else "";
        defaultText = literalExpression "config.services.hyperhive.domain";
        example = "hive.example";
        description = ''
          The homeserver's server name: the part after `:` in user and room IDs. It cannot be
          changed once the homeserver has a database. Earlier versions of this module used
          `matrix.<domain>`; set this explicitly to that value to keep existing user and room
          IDs.
        '';
      };

      gatewayHost = mkOption {
        type = types.nullOr types.str;
        default = if domainSet then "matrix.${top.domain}" else null;
        defaultText = literalExpression ''"matrix.''${config.services.hyperhive.domain}"'';
        description = ''
          Host name of the nginx virtual host that serves the homeserver's client and
          federation APIs (and the web client with `gui.enable`), also advertised in
          `/.well-known/matrix/*`. TLS for it is configured on
          `services.nginx.virtualHosts.<gatewayHost>` as usual. `null`: no gateway.
        '';
      };

      httpPort = mkOption {
        type = types.port;
        default = defaults.httpPort;
        description = ''
          The one port tuwunel listens on, for clients and for federation (no separate 8448
          listener).
        '';
      };

      openFirewall = mkOption {
        type = types.bool;
        default = defaults.openFirewall;
        description = ''
          Open `httpPort` in the firewall and make tuwunel listen on all IPv4 addresses instead
          of 127.0.0.1. Port 8448 is never opened. Was `true` in earlier versions.
        '';
      };

      trustedServers = mkOption {
        type = types.listOf types.str;
        default = defaults.trustedServers;
        example = [ "matrix.org" ];
        description = "Notary servers tuwunel asks for other servers' keys. Federation stays on either way.";
      };

      maxRequestSize = mkOption {
        type = types.ints.positive;
        default = defaults.maxRequestSize;
        description = "Largest request body tuwunel (and the gateway) accept, in bytes.";
      };

      registrationTokenFile = mkOption {
        type = types.nullOr types.str;
        default = defaults.registrationTokenFile;
        description = ''
          File holding the token humans need to sign up on the homeserver. Created at
          activation with a random 64-hex-character token when missing or empty, always
          `0600 root`; shared read-only with the container and handed to tuwunel as a
          systemd credential. `null` turns sign-ups off. Agents never use it: the appservice
          creates their accounts.
        '';
      };

      appservice = {
        enable = mkOption {
          type = types.bool;
          default = defaults.appservice.enable;
          description = "Run hive-matrix, the appservice that creates the agents' accounts and the hive's rooms.";
        };

        id = mkOption {
          type = types.str;
          default = defaults.appservice.id;
          description = "Application service ID in the registration.";
        };

        port = mkOption {
          type = types.port;
          default = defaults.appservice.port;
          description = "Port of the appservice's HTTP API on 127.0.0.1 (tuwunel reaches it there).";
        };

        botLocalpart = mkOption {
          type = types.str;
          default = defaults.appservice.botLocalpart;
          description = "Localpart of the bot user, `@<botLocalpart>:<serverName>`.";
        };

        operators = mkOption {
          type = types.listOf types.str;
          default = defaults.appservice.operators;
          example = [ "@alice:hive.example" ];
          description = "Matrix user IDs of the hive's operators: invited to the rooms, obeyed in the control room.";
        };

        agentLocalpart = mkOption {
          type = types.str;
          default = defaults.appservice.agentLocalpart;
          example = "{name}";
          description = ''
            Localpart template of agent users; `{name}` (exactly once) is the agent name, around
            it only `a-z 0-9 . _ = / -`. `"{name}"` alone keeps the user IDs of agents created by
            the older registration-token flow; the registration then lists the agents one by one
            (see `agentNames`).
          '';
        };

        agentNames = mkOption {
          type = types.listOf types.str;
          default = defaults.appservice.agentNames;
          example = [ "alpha" "beta" ];
          description = ''
            Agents to provision besides those found under `agentStateRoot`. With the `{name}`
            template these are the names the registration lists.
          '';
        };

        restartCommand = mkOption {
          type = types.listOf types.str;
          default = defaults.appservice.restartCommand;
          description = ''
            Command (argv, no shell) run after an agent's token file is (re)written; `{name}` is
            replaced by the agent name. A failure is logged as a warning.
          '';
        };

        restartShell = mkOption {
          type = types.nullOr types.str;
          default = "${pkgs.dash}/bin/dash";
          defaultText = literalExpression ''"''${pkgs.dash}/bin/dash"'';
          description = ''
            POSIX shell of the fork server that runs `restartCommand` (agents.restartShell; the
            command itself never goes through a shell). dash forks at about half the CPU of bash,
            NixOS's `/bin/sh`. `null` leaves hive-matrix's default, `/bin/sh`.
          '';
        };

        stateDir = mkOption {
          type = types.str;
          default = defaults.appservice.stateDir;
          description = "hive-matrix's state (room IDs, transaction log, agent records), mode 0700.";
        };

        agentStateRoot = mkOption {
          type = types.str;
          default = defaults.appservice.agentStateRoot;
          description = "An agent exists when `<agentStateRoot>/<name>/state/` exists; its token goes there.";
        };

        registration = mkOption {
          type = types.str;
          default = defaults.appservice.registration;
          description = ''
            The registration file (with the as/hs tokens), written at activation. Its directory
            is shared read-only with the homeserver container, so it gets a directory of its own.
          '';
        };

        settings = mkOption {
          type = (pkgs.formats.json { }).type;
          default = defaults.appservice.settings;
          example = {
            logging.level = "debug";
            homeserver.requestTimeoutMs = 60000;
          };
          description = ''
            Further hive-matrix config keys (src/config/schema.ts), merged over the generated
            config. Unknown keys make hive-matrix refuse to start.
          '';
        };
      };

      gui = {
        enable = mkEnableOption "FluffyChat (web) at `https://<gatewayHost>/`";

        package = mkOption {
          type = types.package;
          default = pkgs.fluffychat-web;
          defaultText = literalExpression "pkgs.fluffychat-web";
          description = "The web client served at the gateway's root.";
        };
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    { assertions = hlib.assertions input; }

    # Nothing else while an assertion fails: NixOS then reports the assertions' messages, not a
    # type error deep inside the container that a bad value (e.g. no domain) would cause first.
    (mkIf valid (mkMerge [
      {
        containers.${hlib.containerName} = {
          autoStart = true;
          privateNetwork = false;
          bindMounts = builtins.listToAttrs (
            map (path: {
              name = path;
              value = {
                hostPath = path;
                isReadOnly = true;
              };
            }) (hlib.containerBindMounts input)
          );
          config = {
            system.stateVersion = hostStateVersion;
            services.matrix-tuwunel = {
              enable = true;
              package = cfg.tuwunelPackage;
              settings = hlib.tuwunelSettings input;
            };
            systemd.services.tuwunel = {
              serviceConfig.LoadCredential = hlib.tuwunelCredentials input;
              # tuwunel reads registrations at startup only: restart it when what the registration
              # says changes (the host's activation has rewritten the file by then).
              restartTriggers = optional as.enable (builtins.toJSON (hlib.registrationWithoutTokens input));
            };
          };
        };

        networking.firewall.allowedTCPPorts = optional cfg.openFirewall cfg.httpPort;

        system.activationScripts.hive-matrix = {
          # users: the service's group exists by then (when users are created at activation).
          deps = [
            "specialfs"
            "users"
          ];
          text =
            optionalString (cfg.registrationTokenFile != null) tokenSnippet
            + optionalString as.enable registrationSnippet;
        };
      }

      (mkIf as.enable {
        environment.etc."hive-matrix/config.yaml".source = configFile;
        environment.systemPackages = [ cfg.package ];

        users.users.${hlib.serviceUser} = {
          isSystemUser = true;
          group = hlib.serviceUser;
          description = "hive-matrix, the hive's Matrix application service";
        };
        users.groups.${hlib.serviceUser} = { };

        systemd.tmpfiles.rules = [
          "d ${as.stateDir} 0700 ${hlib.serviceUser} ${hlib.serviceUser} -"
          # Adopts a state dir written by an earlier, root-run hive-matrix; `~` keeps files 0600.
          "Z ${as.stateDir} ~0700 ${hlib.serviceUser} ${hlib.serviceUser} -"
        ] ++ hlib.agentAccessRules input;

        # A new agent dir gets its ACL entries when it appears, not only at the next boot or
        # activation: the agents' root is watched, and tmpfiles re-applied below it.
        systemd.paths.hive-matrix-agent-access = {
          description = "Watch for new agent state dirs to grant hive-matrix access to";
          wantedBy = [ "paths.target" ];
          pathConfig = {
            PathChanged = as.agentStateRoot;
            Unit = "hive-matrix-agent-access.service";
          };
        };
        systemd.services.hive-matrix-agent-access = {
          description = "Grant hive-matrix access to the agents' state dirs";
          serviceConfig = {
            Type = "oneshot";
            ExecStart = agentAccessScript;
            ProtectSystem = "strict";
            ReadWritePaths = [ "-${as.agentStateRoot}" ];
            PrivateNetwork = true;
          };
        };

        # The one privileged thing hive-matrix does after writing a token: restart that agent's
        # daemon. Polkit lets its user do exactly that (verb `restart`, the agents' units only).
        security.polkit = mkIf (polkitRule != null) {
          enable = mkDefault true;
          extraConfig = polkitRule;
        };

        systemd.services.hive-matrix = {
          description = "hive-matrix, the hive's Matrix application service";
          wantedBy = [ "multi-user.target" ];
          # Requires: a restart of the homeserver container (e.g. after the registration changed)
          # restarts hive-matrix too, so both run with the same tokens.
          requires = [ "container@${hlib.containerName}.service" ];
          after = [
            "network.target"
            "container@${hlib.containerName}.service"
          ];
          environment = {
            NODE_ENV = "production";
            # A 2 MB young generation instead of V8's default 16 MB semi-spaces: with 1,000 agents the
            # service stays under 120 MB resident at no measurable cost (docs/performance.md).
            NODE_OPTIONS = "--max-semi-space-size=2";
          };
          serviceConfig = {
            ExecStartPre = [ "+${registrationAccessScript}" ];
            ExecStart = "${lib.getExe cfg.package} run --config ${configFile}";
            # SIGHUP re-reads the registration (new agents under the `{name}` template) without a restart.
            ExecReload = "${coreutils}/kill -HUP $MAINPID";
            Restart = "on-failure";
            RestartSec = 5;

            # Unprivileged: its own state dir, the registration through its group, the agents'
            # state dirs through ACL entries, restarts through polkit. Everything else is taken
            # away; docs/nixos.md says what a compromised service could still do.
            User = hlib.serviceUser;
            Group = hlib.serviceUser;
            CapabilityBoundingSet = "";
            AmbientCapabilities = "";
            NoNewPrivileges = true;
            UMask = "0077";
            ProtectSystem = "strict";
            ReadWritePaths = [
              as.stateDir
              "-${as.agentStateRoot}"
            ];
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            ProtectKernelTunables = true;
            ProtectKernelModules = true;
            ProtectKernelLogs = true;
            ProtectControlGroups = true;
            ProtectClock = true;
            ProtectHostname = true;
            ProtectProc = "invisible";
            # The homeserver and the appservice port are on loopback; nothing else is reachable.
            IPAddressAllow = "localhost";
            IPAddressDeny = "any";
            # AF_UNIX: the system bus, for the restarts.
            RestrictAddressFamilies = [
              "AF_UNIX"
              "AF_INET"
              "AF_INET6"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            LockPersonality = true;
            RemoveIPC = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "@system-service"
              "~@privileged"
            ];
            SystemCallErrorNumber = "EPERM";
            # Node's JIT needs writable+executable memory, so no MemoryDenyWriteExecute.
          };
        };
      })

      (mkIf (cfg.gatewayHost != null) {
        services.nginx = {
          enable = true;
          virtualHosts.${cfg.gatewayHost}.locations =
            {
              "/_matrix/" = {
                proxyPass = upstream;
                recommendedProxySettings = true;
                extraConfig = "client_max_body_size ${toString cfg.maxRequestSize};";
              };
              "/.well-known/matrix/" = {
                proxyPass = upstream;
                recommendedProxySettings = true;
              };
            }
            // optionalAttrs cfg.gui.enable {
              "/" = {
                root = cfg.gui.package;
                tryFiles = "$uri $uri/ /index.html";
              };
              "= /config.json".alias = guiConfig;
            };
        };
      })
    ]))
  ]);
}
