# Pure functions behind the NixOS module: option values in, tuwunel settings, the hive-matrix
# config, the appservice registration (without its tokens) and the assertions out.
#
# Only builtins are used, so this file evaluates without nixpkgs:
#   nix-instantiate --eval --strict --json -E '(import ./nix/lib.nix).hiveMatrixConfig { domain = "hive.example"; ... }'
# test/unit/nix.test.ts evaluates it that way and cross-checks the registration against the
# TypeScript `buildRegistration` (src/registration.ts), which is the source of truth for its shape.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elemAt
    filter
    isAttrs
    length
    listToAttrs
    map
    match
    replaceStrings
    split
    substring
    stringLength
    toString
    ;

  # --- small helpers (nixpkgs lib equivalents, kept local so nixpkgs is not needed) ---------

  # Right wins; nested attribute sets merge, everything else (lists included) is replaced.
  recursiveUpdate =
    left: right:
    left
    // listToAttrs (
      map (name: {
        inherit name;
        value =
          if left ? ${name} && isAttrs left.${name} && isAttrs right.${name} then
            recursiveUpdate left.${name} right.${name}
          else
            right.${name};
      }) (attrNames right)
    );

  optionalAttrs = cond: attrs: if cond then attrs else { };

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  hasSuffix =
    suffix: s:
    let
      ls = stringLength s;
      lx = stringLength suffix;
    in
    ls >= lx && substring (ls - lx) lx s == suffix;

  # Sorted and without duplicates (attribute names are kept sorted by Nix).
  sortedUnique = names: attrNames (listToAttrs (map (n: { name = n; value = null; }) names));

  # True when `inner` is `outer` or lies below it.
  isWithin =
    outer: inner:
    let
      o = if hasSuffix "/" outer then outer else "${outer}/";
    in
    inner == outer || hasPrefix o inner;

  # --- the facts shared by the module, the docs and the tests --------------------------------

  defaults = {
    httpPort = 8008;
    openFirewall = false;
    trustedServers = [ ];
    maxRequestSize = 20000000;
    registrationTokenFile = "/var/lib/hyperhive/matrix-register-token";
    appservice = {
      enable = true;
      id = "hyperhive";
      port = 9010;
      botLocalpart = "hive";
      operators = [ ];
      agentLocalpart = "agent-{name}";
      agentNames = [ ];
      restartCommand = [
        "systemctl"
        "restart"
        "hive-matrix-daemon@{name}"
      ];
      stateDir = "/var/lib/hyperhive/matrix";
      agentStateRoot = "/var/lib/hyperhive/agents";
      # Its own directory: the directory is shared read-only with the homeserver container.
      registration = "/var/lib/hyperhive/matrix-appservice/registration.yaml";
      settings = { };
    };
    gui.enable = false;
  };

  # The name of the nixos-container that runs tuwunel, and where systemd puts tuwunel's
  # credentials inside it (tuwunel runs with DynamicUser, so it reads secrets only from there).
  containerName = "hive-matrix";
  credentialsDir = "/run/credentials/tuwunel.service";
  tokenCredential = "registration_token";

  # Fills in what the caller left out. `serverName` defaults to the bare domain and
  # `gatewayHost` to `matrix.<domain>`; an explicit `gatewayHost = null` means no gateway.
  withDefaults =
    input:
    let
      domain = input.domain or null;
      merged = recursiveUpdate defaults input;
    in
    merged
    // {
      inherit domain;
      serverName = input.serverName or domain;
      gatewayHost = if input ? gatewayHost then input.gatewayHost else "matrix.${toString domain}";
    };

  # --- regexes and templates (mirror src/registration.ts and src/config/schema.ts) ----------

  # Exactly the characters `\ . + * ? ( ) | [ ] { } ^ $` get a backslash, as in escapeRegex().
  regexSpecials = [
    "\\"
    "."
    "+"
    "*"
    "?"
    "("
    ")"
    "|"
    "["
    "]"
    "{"
    "}"
    "^"
    "$"
  ];
  escapeRegex = replaceStrings regexSpecials (map (c: "\\" + c) regexSpecials);

  # `agent-{name}` -> { prefix = "agent-"; suffix = ""; }, or null when `{name}` is not there
  # exactly once.
  splitTemplate =
    template:
    let
      parts = split "[{]name[}]" template;
    in
    if length parts == 3 then
      {
        prefix = elemAt parts 0;
        suffix = elemAt parts 2;
      }
    else
      null;

  templateProblem =
    template:
    let
      parts = splitTemplate template;
    in
    if parts == null then
      "must contain {name} exactly once"
    else if match "[a-z0-9._=/-]*" (parts.prefix + parts.suffix) == null then
      "may only contain a-z, 0-9 and . _ = / - around {name}"
    else
      null;

  # A template like `agent-{name}` has a fixed prefix or suffix; `{name}` alone has neither.
  templateHasFixedPart = template: template != "{name}";

  isUserId = id: match "@[^:[:space:]]+:[^[:space:]]+" id != null;
  isServerName = name: match "[A-Za-z0-9.-]+(:[0-9]+)?" name != null;
  isLocalpart = lp: match "[a-z0-9._=/-]+" lp != null;
  isAppserviceId = id: match "[A-Za-z0-9._-]+" id != null;
  isAgentName = max: name: match "[a-z0-9][a-z0-9-]*" name != null && stringLength name <= max;
  # Absolute and without "." or ".." segments.
  isAbsolutePath = p: hasPrefix "/" p && match ".*/\\.\\.?(/.*)?" p == null;
  isPort = p: builtins.isInt p && p >= 1 && p <= 65535;

  # --- what the module generates ---------------------------------------------------------------

  # The homeserver and appservice as hive-matrix reaches them (the container shares the host
  # network, so loopback works in both directions).
  homeserverUrl = cfg: "http://127.0.0.1:${toString cfg.httpPort}";
  appserviceUrl = cfg: "http://127.0.0.1:${toString cfg.appservice.port}";

  # The hive-matrix config file (src/config/schema.ts). Only keys the schema knows are emitted,
  # because unknown keys are errors; `appservice.settings` is merged last for the rest
  # (logging, timeouts, ...). No secrets: the tokens are in the registration file.
  hiveMatrixConfig =
    input:
    let
      cfg = withDefaults input;
      as = cfg.appservice;
    in
    recursiveUpdate {
      homeserver = {
        url = homeserverUrl cfg;
        domain = cfg.serverName;
      };
      appservice = {
        inherit (as) id port registration botLocalpart;
        bind = "127.0.0.1";
        url = appserviceUrl cfg;
      };
      inherit (as) stateDir operators;
      agents = {
        stateRoot = as.agentStateRoot;
        names = as.agentNames;
        localpart = as.agentLocalpart;
        inherit (as) restartCommand;
      }
      // optionalAttrs (as ? restartShell && as.restartShell != null) { inherit (as) restartShell; };
    } as.settings;

  # The exclusive user namespace: the bot, then the agents (userNamespaces() in TypeScript).
  # `config` is a hive-matrix config as hiveMatrixConfig returns it.
  userNamespaces =
    config:
    let
      domain = escapeRegex config.homeserver.domain;
      template = config.agents.localpart;
      parts = splitTemplate template;
      entry = regex: {
        exclusive = true;
        inherit regex;
      };
      agents =
        if parts == null then
          throw "hive-matrix: agent localpart template \"${template}\" must contain {name} exactly once"
        else if templateHasFixedPart template then
          [ (entry "^@${escapeRegex parts.prefix}[a-z0-9-]+${escapeRegex parts.suffix}:${domain}$") ]
        else
          map (name: entry "^@${escapeRegex name}:${domain}$") (sortedUnique config.agents.names);
    in
    [ (entry "^@${escapeRegex config.appservice.botLocalpart}:${domain}$") ] ++ agents;

  # The registration without `as_token` and `hs_token`: everything the homeserver learns about
  # hive-matrix that is not secret (buildRegistration() in TypeScript, from the same config).
  # The tokens are added on the host at activation.
  registrationWithoutTokens =
    input:
    let
      config = hiveMatrixConfig input;
    in
    {
      inherit (config.appservice) id url;
      sender_localpart = config.appservice.botLocalpart;
      namespaces = {
        users = userNamespaces config;
        aliases = [ ];
        rooms = [ ];
      };
      rate_limited = false;
    };

  # Name of the registration inside tuwunel's credentials directory; it must end in .yaml,
  # since tuwunel's appservice_dir loader skips other files.
  registrationCredential = input: "${(hiveMatrixConfig input).appservice.id}.yaml";

  # `[global]` of tuwunel.toml. Client and federation APIs share the one listener on httpPort
  # (no 8448 listener); secrets come in through systemd credentials, never through the store.
  tuwunelSettings =
    input:
    let
      cfg = withDefaults input;
    in
    {
      global = {
        server_name = cfg.serverName;
        address = if cfg.openFirewall then [ "0.0.0.0" ] else [ "127.0.0.1" ];
        port = [ cfg.httpPort ];
        max_request_size = cfg.maxRequestSize;
        allow_federation = true;
        trusted_servers = cfg.trustedServers;
        allow_registration = cfg.registrationTokenFile != null;
        # Agents get exactly the display name hive-matrix gives them.
        new_user_displayname_suffix = "";
      }
      // optionalAttrs (cfg.registrationTokenFile != null) {
        registration_token_file = "${credentialsDir}/${tokenCredential}";
      }
      // optionalAttrs cfg.appservice.enable {
        appservice_dir = credentialsDir;
      }
      // optionalAttrs (cfg.gatewayHost != null) {
        well_known = {
          client = "https://${cfg.gatewayHost}";
          server = "${cfg.gatewayHost}:443";
        };
      };
    };

  # systemd LoadCredential= lines for tuwunel inside the container. The host paths are bind
  # mounted read-only at the same paths.
  tuwunelCredentials =
    input:
    let
      cfg = withDefaults input;
    in
    (if cfg.registrationTokenFile != null then [ "${tokenCredential}:${cfg.registrationTokenFile}" ] else [ ])
    ++ (
      if cfg.appservice.enable then
        [ "${registrationCredential input}:${cfg.appservice.registration}" ]
      else
        [ ]
    );

  # Host paths shared read-only with the container: the token file itself and the directory of
  # the registration (a directory, so that a re-written registration is seen without
  # restarting the container).
  containerBindMounts =
    input:
    let
      cfg = withDefaults input;
    in
    (if cfg.registrationTokenFile != null then [ cfg.registrationTokenFile ] else [ ])
    ++ (if cfg.appservice.enable then [ (dirOf cfg.appservice.registration) ] else [ ]);

  # --- least privilege (docs/nixos.md, "Hardening") ---------------------------------------------

  # hive-matrix runs as this user and group; it owns its state dir and reads the registration
  # through the group.
  serviceUser = "hive-matrix";

  # Longest agent name, as hive-matrix checks it (agents.maxNameLength, default 9).
  maxNameLength = input: (withDefaults input).appservice.settings.agents.maxNameLength or 9;

  # POSIX ACL entries, as systemd-tmpfiles lines, that let the service user list the agents'
  # root, pass through each agent dir and write (only) into each agent's `state/`. tmpfiles
  # expands the globs at boot, at every activation and when the root changes (the
  # hive-matrix-agent-access path unit), and never follows a symlink when it sets an ACL.
  # Each line also sets the ACL mask to rwx: a chmod of the dir (e.g. another tmpfiles line
  # `d <dir> 0700`, re-applied in the same run) narrows the mask, which would otherwise mask the
  # entry out. rwx never narrows anything; the owning group keeps its own entry's rights.
  agentAccessRules =
    input:
    let
      root = (withDefaults input).appservice.agentStateRoot;
    in
    [
      "a+ ${root} - - - - u:${serviceUser}:r-x,m::rwx"
      "a+ ${root}/* - - - - u:${serviceUser}:--x,m::rwx"
      "a+ ${root}/*/state - - - - u:${serviceUser}:rwx,m::rwx"
    ];

  # The units the default restart command (`systemctl restart <unit with {name}>`) restarts, as
  # an anchored regular expression over full unit names (with `.service`), for the polkit rule.
  # null when restartCommand is anything else: then no rule is installed (docs/nixos.md).
  restartUnitRegex =
    input:
    let
      cfg = withDefaults input;
      argv = cfg.appservice.restartCommand;
      unit = if length argv == 3 then elemAt argv 2 else "";
      parts = splitTemplate unit;
      base = if hasSuffix ".service" unit then substring 0 (stringLength unit - 8) unit else unit;
      baseParts = splitTemplate base;
      max = maxNameLength input;
      isSystemctl = cmd: cmd == "systemctl" || hasSuffix "/systemctl" cmd;
    in
    if
      length argv == 3
      && isSystemctl (elemAt argv 0)
      && elemAt argv 1 == "restart"
      && parts != null
      && match "[A-Za-z0-9@:_.-]*[{]name[}][A-Za-z0-9@:_.-]*" unit != null
    then
      "^${escapeRegex baseParts.prefix}[a-z0-9][a-z0-9-]{0,${toString (max - 1)}}${escapeRegex baseParts.suffix}\\.service$"
    else
      null;

  # The polkit rule that lets the service user restart the agents' daemons, and nothing else:
  # only the `restart` verb, only units whose name matches restartUnitRegex.
  restartPolkitRule =
    input:
    let
      regex = restartUnitRegex input;
    in
    if regex == null then
      null
    else
      ''
        // hive-matrix (user ${serviceUser}) may restart the agents' daemons after writing their
        // tokens, and nothing else.
        polkit.addRule(function (action, subject) {
          if (action.id == "org.freedesktop.systemd1.manage-units" &&
              subject.user == "${serviceUser}" &&
              action.lookup("verb") == "restart" &&
              /${regex}/.test(action.lookup("unit"))) {
            return polkit.Result.YES;
          }
        });
      '';

  # --- assertions ----------------------------------------------------------------------------

  # [ { assertion = bool; message = str; } ], as NixOS `config.assertions` wants them.
  # Every message names the option to set. Without a domain nothing else can be checked, so
  # only that one is reported.
  assertions =
    input:
    let
      cfg = withDefaults input;
      as = cfg.appservice;
      p = "services.hyperhive.matrix";
      check = assertion: message: { inherit assertion message; };
      maxName = as.settings.agents.maxNameLength or 9;
      problem = templateProblem as.agentLocalpart;
      badOperators = filter (o: !(isUserId o)) as.operators;
      badNames = filter (n: !(isAgentName maxName n)) as.agentNames;
      regDir = dirOf as.registration;
      domainMissing = cfg.domain == null || cfg.domain == "";
      quoted = list: concatStringsSep ", " (map (x: "\"${x}\"") list);
    in
    if domainMissing then
      [
        (check false "${p}.enable is set but services.hyperhive.domain is not: set services.hyperhive.domain to the hive's domain, e.g. \"hive.example\" (it is the default server name of the homeserver).")
      ]
    else
      [
        (check (isServerName cfg.serverName) "${p}.serverName = \"${cfg.serverName}\" is not a server name: set ${p}.serverName (or services.hyperhive.domain) to a host name like \"hive.example\", optionally with :port.")
        (check (cfg.gatewayHost == null || match "[A-Za-z0-9.-]+" cfg.gatewayHost != null) "${p}.gatewayHost = \"${toString cfg.gatewayHost}\" is not a host name: set it to a name like \"matrix.${cfg.domain}\", or to null for no gateway.")
        (check (isPort cfg.httpPort) "${p}.httpPort = ${toString cfg.httpPort} is not a TCP port (1-65535).")
        (check (!cfg.gui.enable || cfg.gatewayHost != null) "${p}.gui.enable needs a gateway to serve the web client: set ${p}.gatewayHost (default \"matrix.<domain>\") or set ${p}.gui.enable = false.")
        (check (cfg.registrationTokenFile == null || isAbsolutePath cfg.registrationTokenFile) "${p}.registrationTokenFile = \"${toString cfg.registrationTokenFile}\" must be an absolute path, or null to turn human sign-ups off.")
      ]
      ++ (
        if !as.enable then
          [ ]
        else
          [
            (check (as.operators != [ ]) "${p}.appservice.operators is empty: nobody could command the hive. Set it to the operators' Matrix user IDs, e.g. [ \"@alice:${cfg.serverName}\" ].")
            (check (badOperators == [ ]) "${p}.appservice.operators: ${quoted badOperators} is not a full Matrix user ID; write them like \"@alice:${cfg.serverName}\".")
            (check (problem == null) "${p}.appservice.agentLocalpart = \"${as.agentLocalpart}\" ${toString problem}; use e.g. \"agent-{name}\" (the default), or \"{name}\" to keep the user IDs of agents from the older registration-token flow.")
            (check (
              problem != null
              || (
                as.agentLocalpart != as.botLocalpart
                && replaceStrings [ "{name}" ] [ "" ] as.agentLocalpart != as.botLocalpart
              )
            ) "${p}.appservice.agentLocalpart = \"${as.agentLocalpart}\" can produce the bot's localpart \"${as.botLocalpart}\": change ${p}.appservice.agentLocalpart or ${p}.appservice.botLocalpart.")
            (check (problem != null || templateHasFixedPart as.agentLocalpart || as.agentNames != [ ]) "${p}.appservice.agentLocalpart = \"{name}\" has no fixed prefix or suffix, so the registration lists agents one by one: set ${p}.appservice.agentNames to the hive's agent names.")
            (check (badNames == [ ]) "${p}.appservice.agentNames: ${quoted badNames}: agent names are lower-case letters, digits and -, start with a letter or digit and have at most ${toString maxName} characters.")
            (check (isLocalpart as.botLocalpart) "${p}.appservice.botLocalpart = \"${as.botLocalpart}\" may only contain a-z, 0-9 and . _ = / -.")
            (check (isAppserviceId as.id) "${p}.appservice.id = \"${as.id}\" may only contain letters, digits and . _ -.")
            (check (isPort as.port && as.port != cfg.httpPort) "${p}.appservice.port = ${toString as.port} must be a TCP port (1-65535) other than ${p}.httpPort (${toString cfg.httpPort}).")
            (check (
              isAbsolutePath as.registration && (hasSuffix ".yaml" as.registration || hasSuffix ".yml" as.registration)
            ) "${p}.appservice.registration = \"${as.registration}\" must be an absolute path ending in .yaml or .yml (tuwunel's appservice_dir loads only those).")
            (check (
              regDir != "/"
              && !(isWithin regDir as.stateDir)
              && !(isWithin as.stateDir regDir)
              && !(isWithin regDir as.agentStateRoot)
              && !(isWithin as.agentStateRoot regDir)
            ) "${p}.appservice.registration = \"${as.registration}\" must be in a directory of its own: that directory is shared read-only with the homeserver container, so it must not be, contain or lie inside ${p}.appservice.stateDir or ${p}.appservice.agentStateRoot.")
            (check (isAbsolutePath as.stateDir && isAbsolutePath as.agentStateRoot) "${p}.appservice.stateDir and ${p}.appservice.agentStateRoot must be absolute paths.")
            (check (as.restartCommand != [ ]) "${p}.appservice.restartCommand must not be empty (an argv; {name} is replaced by the agent name).")
          ]
      );

  # Messages of the assertions that fail: what the tests look at.
  failedAssertions = input: map (a: a.message) (filter (a: !a.assertion) (assertions input));
in
{
  inherit
    defaults
    withDefaults
    containerName
    credentialsDir
    tokenCredential
    escapeRegex
    splitTemplate
    templateProblem
    templateHasFixedPart
    homeserverUrl
    appserviceUrl
    hiveMatrixConfig
    registrationWithoutTokens
    registrationCredential
    tuwunelSettings
    tuwunelCredentials
    containerBindMounts
    assertions
    failedAssertions
    recursiveUpdate
    serviceUser
    maxNameLength
    agentAccessRules
    restartUnitRegex
    restartPolkitRule
    ;
}
