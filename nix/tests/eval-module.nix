# Evaluates ../module.nix without nixpkgs, against a small stand-in for `lib` and `pkgs`.
#
# There is no module system here: option defaults are read from the declarations, the given
# `settings` are laid over them, and mkIf/mkMerge are resolved by hand. Types are not checked.
# What this does check is the module's own wiring: every attribute it reads exists, and the
# container, the services, the activation script and the gateway come out as intended.
# test/unit/nix-module.test.ts runs it with `nix-instantiate --eval --strict --json` when no copy of
# nixpkgs' lib is around (with one, it runs ./eval-nixos.nix instead).
{
  domain ? "hive.example",
  # services.hyperhive.matrix.* as a NixOS configuration would set them.
  settings ? { },
}:
let
  hlib = import ../lib.nix;
  inherit (hlib) recursiveUpdate;

  fakePackage = name: {
    outPath = "/nix/store/eval-${name}";
    meta.mainProgram = name;
  };

  option = attrs: attrs // { _type = "option"; };
  type = name: { inherit name; };

  lib = {
    mkOption = option;
    mkEnableOption = description: option {
      type = type "bool";
      default = false;
      inherit description;
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkDefault = content: {
      _type = "override";
      priority = 1000;
      inherit content;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    optional = cond: x: if cond then [ x ] else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    optionalString = cond: s: if cond then s else "";
    escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
    getExe = pkg: "${pkg}/bin/${pkg.meta.mainProgram}";
    types = {
      str = type "str";
      bool = type "bool";
      port = type "port";
      package = type "package";
      nullOr = t: type "nullOr ${t.name}";
      listOf = t: type "listOf ${t.name}";
      ints.positive = type "positive int";
    };
  };

  pkgs = {
    # Keeps the text, so the generated files can be inspected.
    writeText = name: text: {
      outPath = "/nix/store/eval-${name}";
      inherit name text;
    };
    writeShellScript = pkgs.writeText;
    coreutils = fakePackage "coreutils";
    gnugrep = fakePackage "gnugrep";
    dash = fakePackage "dash";
    formats.json = _: { type = type "json"; };
    callPackage = _path: _args: fakePackage "hive-matrix";
    matrix-tuwunel = fakePackage "tuwunel";
    fluffychat-web = fakePackage "fluffychat-web";
  };

  # Option declarations -> their defaults.
  defaultsOf =
    decls:
    if decls._type or null == "option" then
      decls.default
    else
      builtins.mapAttrs (_: defaultsOf) (removeAttrs decls [ "domain" ]);

  module = import ../module.nix {
    inherit lib pkgs;
    options.services.hyperhive.domain.isDefined = domain != null;
    config = {
      system.stateVersion = "25.11";
      systemd.package = fakePackage "systemd";
      services.hyperhive = {
        inherit domain;
        matrix = recursiveUpdate (defaultsOf module.options.services.hyperhive.matrix) settings;
      };
    };
  };

  absent = {
    _type = "absent";
  };

  # Definitions with mkIf/mkMerge/mkDefault anywhere in them -> plain values; a false mkIf
  # leaves no definition (priorities are ignored: the module sets nothing twice).
  resolve =
    value:
    if builtins.isAttrs value && value._type or null == "if" then
      (if value.condition then resolve value.content else absent)
    else if builtins.isAttrs value && value._type or null == "merge" then
      builtins.foldl' (acc: c: recursiveUpdate acc c) { } (
        builtins.filter (c: c != absent) (map resolve value.contents)
      )
    else if builtins.isAttrs value && value._type or null == "override" then
      resolve value.content
    else if builtins.isAttrs value && !(value ? outPath) then
      let
        resolved = builtins.mapAttrs (_: resolve) value;
      in
      removeAttrs resolved (builtins.filter (n: resolved.${n} == absent) (builtins.attrNames resolved))
    else
      value;

  result = resolve module.config;
  out = if result == absent then { } else result;
  container = out.containers.hive-matrix or null;
  service = out.systemd.services.hive-matrix or null;
  etcConfig = out.environment.etc."hive-matrix/config.yaml".source or null;
  unit =
    u:
    if u == null then
      null
    else
      {
        description = u.description or "";
        wantedBy = u.wantedBy or [ ];
        requires = u.requires or [ ];
        after = u.after or [ ];
        restartTriggers = u.restartTriggers or [ ];
      }
      // (if u ? serviceConfig then { inherit (u) serviceConfig; environment = u.environment or { }; } else { })
      // (if u ? pathConfig then { inherit (u) pathConfig; } else { });
in
# The same shape as ./eval-nixos.nix gives, where the module sets it.
{
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (out.assertions or [ ]));
  enabled = out ? assertions;
  container =
    if container == null then
      null
    else
      {
        inherit (container) autoStart privateNetwork bindMounts;
        tuwunel = {
          inherit (container.config.services.matrix-tuwunel) enable settings;
          package = "${container.config.services.matrix-tuwunel.package}";
        };
        tuwunelService = unit container.config.systemd.services.tuwunel;
        stateVersion = container.config.system.stateVersion;
      };
  service = unit service;
  accessPath = unit (out.systemd.paths.hive-matrix-agent-access or null);
  accessService = unit (out.systemd.services.hive-matrix-agent-access or null);
  # The script the path unit runs, as text.
  accessScript = out.systemd.services.hive-matrix-agent-access.serviceConfig.ExecStart.text or null;
  users = out.users.users.hive-matrix or null;
  groups = out.users.groups or { };
  polkit = out.security.polkit or { };
  tmpfiles = out.systemd.tmpfiles.rules or [ ];
  hiveMatrixConfig = if etcConfig == null then null else builtins.fromJSON etcConfig.text;
  configPath = if etcConfig == null then null else "${etcConfig}";
  activation = out.system.activationScripts.hive-matrix or null;
  firewall = out.networking.firewall.allowedTCPPorts or [ ];
  nginx = out.services.nginx or { };
  systemPackages = map toString (out.environment.systemPackages or [ ]);
}
