# Evaluates ../module.nix with nixpkgs' own module system: `lib.evalModules` from a copy of
# nixpkgs' lib (nix-community/nixpkgs.lib is enough), real option types and priorities, and the
# NixOS options the module sets declared as nixpkgs declares them (./nixos-stubs.nix).
# Packages are stand-ins: nothing is built, only evaluated.
#
#   nix-instantiate --eval --strict --json nix/tests/eval-nixos.nix \
#     --arg lib 'import /path/to/nixpkgs-lib/lib' --argstr settings '{"enable": true, ...}'
#
# test/unit/nix-module.test.ts drives it. `settings` is services.hyperhive.matrix as JSON; an
# object { "__package": "name" } in it stands for a package.
{
  lib,
  # JSON text of services.hyperhive.matrix.
  settings ? "{}",
  # JSON text of services.hyperhive.domain; null leaves it unset.
  domain ? ''"hive.example"'',
  # JSON text of further definitions anywhere in the configuration, as an operator would add
  # them; { "_type": "override", "priority": 50, "content": x } is mkForce x.
  extra ? "{}",
  # A runNixOSTest file (./vm.nix): its machine's configuration is evaluated instead of
  # `settings`/`domain`, and its test script returned.
  node ? null,
}:
let
  fakePackage = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };

  # Keeps the text, so that generated files can be inspected.
  fakeFile = name: text: fakePackage name // { inherit text; };

  # nixpkgs' pkgs/pkgs-lib/formats.nix, types only.
  formats = {
    json = _: {
      type =
        let
          valueType =
            with lib.types;
            nullOr (oneOf [
              bool
              int
              float
              str
              path
              (attrsOf valueType)
              (listOf valueType)
            ])
            // {
              description = "JSON value";
            };
        in
        valueType;
      generate = name: value: fakeFile name (builtins.toJSON value);
    };
    toml = _: {
      type =
        let
          valueType =
            with lib.types;
            oneOf [
              bool
              int
              float
              str
              path
              (attrsOf valueType)
              (listOf valueType)
            ]
            // {
              description = "TOML value";
            };
        in
        valueType;
      generate = name: value: fakeFile name (builtins.toJSON value);
    };
  };

  pkgs = {
    inherit formats;
    writeText = fakeFile;
    writeShellScript = fakeFile;
    callPackage = _path: _args: fakePackage "hive-matrix";
    runtimeShell = "/nix/store/00000000000000000000000000000000-bash/bin/bash";
    curl = fakePackage "curl";
    jq = fakePackage "jq";
    acl = fakePackage "acl";
    testers.runNixOSTest = test: test;
    coreutils = fakePackage "coreutils";
    gnugrep = fakePackage "gnugrep";
    dash = fakePackage "dash";
    systemd = fakePackage "systemd";
    matrix-tuwunel = fakePackage "tuwunel";
    fluffychat-web = fakePackage "fluffychat-web";
  };

  stubs = import ./nixos-stubs.nix { inherit lib pkgs; };

  withPackages =
    value:
    if builtins.isAttrs value then
      (if value ? __package then fakePackage value.__package else builtins.mapAttrs (_: withPackages) value)
    else if builtins.isList value then
      map withPackages value
    else
      value;

  domainValue = builtins.fromJSON domain;

  vmTest = if node == null then null else import node { inherit pkgs; };

  eval = lib.evalModules {
    modules =
      stubs.hostModules
      ++ [
        { system.stateVersion = "25.11"; }
        (builtins.fromJSON extra)
      ]
      ++ (
        if vmTest == null then
          [
            ../module.nix
            { services.hyperhive.matrix = withPackages (builtins.fromJSON settings); }
            (lib.mkIf (domainValue != null) { services.hyperhive.domain = domainValue; })
          ]
        else
          [
            vmTest.nodes.machine
            # The test driver's own options, which the module does not touch.
            { options.virtualisation = lib.mkOption { type = lib.types.attrsOf lib.types.anything; }; }
          ]
      );
  };

  inherit (eval) config options;

  failed = assertions: map (a: a.message) (builtins.filter (a: !a.assertion) assertions);

  # Every option path under services.hyperhive.matrix, e.g. "appservice.port".
  optionPaths =
    prefix: tree:
    lib.concatLists (
      lib.mapAttrsToList (
        name: value:
        let
          path = prefix ++ [ name ];
        in
        if lib.isOption value then [ (lib.concatStringsSep "." path) ] else optionPaths path value
      ) tree
    );

  # The parts of a systemd unit the module sets (forcing the whole unit would force options
  # without a default, which is an error by design).
  unit =
    u:
    if u == null then
      null
    else
      {
        inherit (u)
          description
          wantedBy
          requires
          after
          restartTriggers
          ;
      }
      // lib.optionalAttrs (u ? serviceConfig) { inherit (u) environment serviceConfig; }
      // lib.optionalAttrs (u ? pathConfig) { inherit (u) pathConfig; };

  container = config.containers.hive-matrix or null;
  service = config.systemd.services.hive-matrix or null;
  etcConfig = config.environment.etc."hive-matrix/config.yaml".source or null;
  activation = config.system.activationScripts.hive-matrix or null;
in
{
  options = optionPaths [ ] options.services.hyperhive.matrix;
  # Forces every option value through its type.
  values = config.services.hyperhive.matrix;
  failedAssertions = failed config.assertions ++ (if container == null then [ ] else failed container.config.assertions);
  container =
    if container == null then
      null
    else
      {
        inherit (container)
          autoStart
          privateNetwork
          privateUsers
          bindMounts
          ;
        tuwunel = {
          inherit (container.config.services.matrix-tuwunel) enable settings;
          package = "${container.config.services.matrix-tuwunel.package}";
        };
        tuwunelService = unit container.config.systemd.services.tuwunel;
        stateVersion = container.config.system.stateVersion;
      };
  service = unit service;
  accessPath = unit (config.systemd.paths.hive-matrix-agent-access or null);
  accessService = unit (config.systemd.services.hive-matrix-agent-access or null);
  # The script the path unit runs, as text.
  accessScript = config.systemd.services.hive-matrix-agent-access.serviceConfig.ExecStart.text or null;
  users = config.users.users.hive-matrix or null;
  groups = config.users.groups;
  polkit = config.security.polkit;
  tmpfiles = config.systemd.tmpfiles.rules;
  hiveMatrixConfig = if etcConfig == null then null else builtins.fromJSON etcConfig.text;
  configPath = if etcConfig == null then null else "${etcConfig}";
  activation = if activation == null then null else { inherit (activation) deps text; };
  firewall = config.networking.firewall.allowedTCPPorts;
  nginx = config.services.nginx;
  systemPackages = map toString config.environment.systemPackages;
  vm = if vmTest == null then null else { inherit (vmTest) name testScript; };
  daemonStandIn = unit (config.systemd.services."hive-matrix-daemon@" or null);
}
