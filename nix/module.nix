# NixOS module `services.infrabot`: the bot as a hardened systemd service.
#
# `settings` mirrors config.example.yaml key for key and is rendered with `pkgs.formats.yaml`
# (nixpkgs pkgs/pkgs-lib/formats.nix: JSON of the value, converted by remarshal's json2yaml).
# The rendered file lands in the world-readable Nix store, so secrets are only ever given as
# `<key>_file` paths (agenix: config.age.secrets.<name>.path) or `<key>_env` variables from
# `environmentFile`; the assertions below refuse a secret value or a secret file in the store.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    concatLists
    concatStringsSep
    elem
    filter
    hasPrefix
    hasSuffix
    isAttrs
    isList
    length
    mapAttrs
    mapAttrsToList
    mkDefault
    mkEnableOption
    mkIf
    mkOption
    optionalAttrs
    types
    ;

  cfg = config.services.infrabot;
  format = pkgs.formats.yaml { };

  # Every field the bot types as SecretStr (bot/config.py `Section`): each may be given as the
  # value, `<key>_file` or `<key>_env`, exactly one of them. tests/test_nix_module.py checks
  # that the list holds every one of the bot's config models; "token" is also kept for
  # backup checks that call an API.
  secretKeys = [
    "access_token"
    "password"
    "bearer_token"
    "secret_access_key"
    "token"
  ];

  # Sections whose `ssh:` (bot/services/ssh.py SshSettings) receives `ssh.knownHosts*` and
  # `ssh.keyFile` when they leave known_hosts / client_keys unset. Also checked by the tests.
  sshSections = [
    "backups"
    "deploy"
  ];

  opt = "services.infrabot";
  storeDir = builtins.storeDir;
  inStore = v: builtins.isPath v || (builtins.isString v && hasPrefix "${storeDir}/" v);
  isLoopback =
    host:
    elem host [
      "localhost"
      "::1"
    ]
    || hasPrefix "127." host;

  # Every attribute set of the settings tree with its dotted location, lists indexed like the
  # bot's own messages (`backups.checks[1]`). Derivations are leaves, not walked into.
  nodes =
    where: value:
    if isAttrs value && !(value ? outPath) then
      [
        {
          inherit where value;
        }
      ]
      ++ concatLists (mapAttrsToList (k: v: nodes "${where}.${k}" v) value)
    else if isList value then
      concatLists (lib.imap0 (i: v: nodes "${where}[${toString i}]" v) value)
    else
      [ ];

  # A secret in one node of the settings: given in two forms (any `<key>_file`/`<key>_env`
  # beside its siblings, so secrets the list misses are covered), as a value, or as a file
  # in the store.
  secretProblems =
    { where, value }:
    let
      base = k: lib.removeSuffix "_env" (lib.removeSuffix "_file" k);
      fileKeys = filter (k: hasSuffix "_file" k) (lib.attrNames value);
      twice = filter (forms: length forms > 1) (
        map (
          key:
          filter (k: (value.${k} or null) != null) [
            key
            "${key}_file"
            "${key}_env"
          ]
        ) (lib.unique (map base (filter (k: hasSuffix "_file" k || hasSuffix "_env" k) (lib.attrNames value))))
      );
    in
    map (
      forms: "${where}: give only one of ${concatStringsSep ", " forms}, as the bot accepts exactly one form of a secret"
    ) twice
    ++ map (
      key: "${where}.${key}: a secret value would be copied into the world-readable Nix store; give ${key}_file (e.g. an agenix secret's path) or ${key}_env (with ${opt}.environmentFile) instead"
    ) (filter (key: (value.${key} or null) != null) secretKeys)
    ++ map (
      key: "${where}.${key}: ${toString value.${key}} is in the Nix store, readable by every user; point it at a file outside the store (agenix: config.age.secrets.<name>.path, as a string)"
    ) (filter (key: value.${key} != null && inStore value.${key}) fileKeys)
    # SSH private keys (SshSettings.client_keys) are secrets too; a Nix path is copied to the store.
    ++ lib.optional (isList (value.client_keys or null) && lib.any inStore value.client_keys) "${where}.client_keys: a private key in the Nix store is readable by every user; give the path of a file outside the store (agenix: config.age.secrets.<name>.path, as a string)";

  knownHostsFile =
    if cfg.ssh.knownHosts != [ ] then "/etc/infrabot/known_hosts" else cfg.ssh.knownHostsFile;
  sshDefaults =
    optionalAttrs (knownHostsFile != null) { known_hosts = knownHostsFile; }
    // optionalAttrs (cfg.ssh.keyFile != null) { client_keys = [ cfg.ssh.keyFile ]; };

  # The settings as written to the file: the SSH material filled into the sections that connect.
  finalSettings = mapAttrs (
    name: section:
    if elem name sshSections && isAttrs section then
      section // { ssh = sshDefaults // (if isAttrs (section.ssh or null) then section.ssh else { }); }
    else
      section
  ) cfg.settings;

  http = cfg.settings.http or { };
  httpPort = http.port or 8080;
  httpHost = http.host or "127.0.0.1";
  state = cfg.settings.state or { };
  underStateDir = p: p == cfg.stateDir || hasPrefix "${cfg.stateDir}/" (toString p);
  exe = "${cfg.package}/bin/infrabot";
in
{
  options.services.infrabot = {
    enable = mkEnableOption "infrabot, the chat-ops bot of the infrastructure team's Matrix room";

    package = mkOption {
      type = types.package;
      description = ''
        The infrabot package. The flake's `nixosModules.default` sets it to the flake's
        `packages.<system>.default`.
      '';
    };

    settings = mkOption {
      type = types.submodule { freeformType = format.type; };
      default = { };
      description = ''
        The bot's configuration, key for key as in config.example.yaml, rendered to YAML in
        the Nix store. Secrets only as `<key>_file` paths (agenix) or `<key>_env` variables
        (see `environmentFile`), never as values. `state.data_dir` defaults to `stateDir`.
      '';
      example = lib.literalExpression ''
        {
          matrix = {
            homeserver = "https://matrix.example.org";
            user_id = "@infrabot:example.org";
            access_token_file = config.age.secrets.infrabot-matrix-token.path;
            rooms = [ "#infra:example.org" ];
          };
        }
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/infrabot";
      description = ''
        The service's state directory (systemd `StateDirectory=`, so below /var/lib): the
        SQLite state and the only place the service may write.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/agenix/infrabot-env";
      description = ''
        A file of `NAME=value` lines (systemd `EnvironmentFile=`) for secrets given as
        `<key>_env` in `settings`, and AWS credentials. Kept outside the Nix store.
      '';
    };

    extraGroups = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "keys" ];
      description = "Supplementary groups of the service, e.g. one that may read secret files.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open `settings.http.port` (default 8080) in the firewall, for Alertmanager webhooks and
        Prometheus scrapes from other machines; needs `settings.http.host` off loopback.
      '';
    };

    ssh = {
      knownHosts = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "pluto.nixos.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..." ];
        description = ''
          known_hosts lines (`host keytype key`) of the machines deploys and backup checks
          reach; written to /etc/infrabot/known_hosts. Host keys are never learned.
        '';
      };
      knownHostsFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "An existing known_hosts file, instead of `ssh.knownHosts`.";
      };
      keyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/agenix/infrabot-ssh-key";
        description = ''
          The bot's SSH private key (a path outside the Nix store, readable by the service
          user; agenix: `owner = "infrabot"`).
        '';
      };
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      internal = true;
      description = "The rendered config file the service runs with.";
    };
  };

  config = mkIf cfg.enable {
    services.infrabot.settings.state.data_dir = mkDefault cfg.stateDir;
    services.infrabot.configFile = format.generate "infrabot.yaml" finalSettings;

    assertions =
      map (message: {
        assertion = false;
        inherit message;
      }) (concatLists (map secretProblems (nodes "${opt}.settings" cfg.settings)))
      ++ [
        {
          assertion = cfg.settings ? matrix;
          message = "${opt}.settings.matrix is required: homeserver, user_id, rooms and access_token_file (or password_file), as in config.example.yaml";
        }
        {
          assertion = hasPrefix "/var/lib/" cfg.stateDir;
          message = "${opt}.stateDir = ${cfg.stateDir}: it must be below /var/lib/ (systemd StateDirectory=)";
        }
        {
          assertion = underStateDir (state.data_dir or cfg.stateDir) && underStateDir (state.path or cfg.stateDir);
          message = "${opt}.settings.state: data_dir and path must be below ${opt}.stateDir (${cfg.stateDir}), the only place the service may write (ProtectSystem=strict)";
        }
        {
          assertion = !(cfg.openFirewall && (http.enabled or true) == false);
          message = "${opt}.openFirewall opens the HTTP port, but settings.http.enabled is false";
        }
        {
          assertion = !(cfg.openFirewall && isLoopback httpHost);
          message = "${opt}.openFirewall opens port ${toString httpPort}, but the bot listens on ${httpHost} only (settings.http.host); set settings.http.host = \"0.0.0.0\" (or \"::\")";
        }
        {
          assertion = !(cfg.ssh.knownHosts != [ ] && cfg.ssh.knownHostsFile != null);
          message = "${opt}.ssh: give knownHosts or knownHostsFile, not both";
        }
        {
          assertion = cfg.ssh.keyFile == null || !inStore cfg.ssh.keyFile;
          message = "${opt}.ssh.keyFile is in the Nix store, readable by every user; point it at a file outside the store (agenix: config.age.secrets.<name>.path)";
        }
        {
          assertion = cfg.environmentFile == null || !inStore cfg.environmentFile;
          message = "${opt}.environmentFile is in the Nix store, readable by every user; point it at a file outside the store";
        }
      ];

    users.users.infrabot = {
      isSystemUser = true;
      group = "infrabot";
      home = cfg.stateDir;
      description = "infrabot chat-ops bot";
    };
    users.groups.infrabot = { };

    environment.etc."infrabot/known_hosts" = mkIf (cfg.ssh.knownHosts != [ ]) {
      text = lib.concatLines cfg.ssh.knownHosts;
      mode = "0444";
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ httpPort ];

    systemd.services.infrabot = {
      description = "infrabot chat-ops bot";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        # A config the bot rejects fails here, with every problem in the journal.
        ExecStartPre = "${exe} check-config --config ${cfg.configFile}";
        ExecStart = "${exe} run --config ${cfg.configFile}";
        User = "infrabot";
        Group = "infrabot";
        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0700";
        WorkingDirectory = cfg.stateDir;
        Restart = "on-failure";
        RestartSec = "10s";

        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        # In a private user namespace every group but the unit's own maps to nobody, so it
        # stays off when extraGroups should grant access to files.
        PrivateUsers = cfg.extraGroups == [ ];
        DevicePolicy = "closed";
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        # AF_NETLINK: glibc's getaddrinfo with AI_ADDRCONFIG (aiohttp's resolver) asks the
        # kernel which address families are configured over netlink.
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
          "AF_NETLINK"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        RemoveIPC = true;
        # No MemoryDenyWriteExecute: libffi closures (cffi, used under cryptography/asyncssh)
        # need writable executable memory.
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
      }
      // optionalAttrs (cfg.extraGroups != [ ]) { SupplementaryGroups = cfg.extraGroups; }
      // optionalAttrs (cfg.environmentFile != null) { EnvironmentFile = cfg.environmentFile; };
    };
  };
}
