{{/*
Names and labels. Kubernetes names are limited to 63 characters (DNS-1123 labels).
*/}}

{{- define "ampgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ampgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ampgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A component's resource name: <fullname>-<component>, within 63 characters.
Usage: include "ampgate.componentName" (dict "ctx" $ "component" "gateway")
*/}}
{{- define "ampgate.componentName" -}}
{{- printf "%s-%s" (include "ampgate.fullname" .ctx | trunc 54 | trimSuffix "-") .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels; with a component they tell gateway and workers apart.
Usage: include "ampgate.selectorLabels" (dict "ctx" $ "component" "gateway")
*/}}
{{- define "ampgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ampgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name | trunc 63 | trimSuffix "-" }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/*
Every resource's labels. Usage: include "ampgate.labels" (dict "ctx" $ "component" "gateway");
"component" may be left out for resources every component shares.
*/}}
{{- define "ampgate.labels" -}}
helm.sh/chart: {{ include "ampgate.chart" .ctx }}
{{ include "ampgate.selectorLabels" . }}
app.kubernetes.io/version: {{ include "ampgate.appVersion" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ampgate
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ampgate.appVersion" -}}
{{- default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image.tag "" falls back to appVersion; a digest pins the image. */}}
{{- define "ampgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "ampgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ampgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding AMPGATE_* secrets: the user's existingSecret or ours. */}}
{{- define "ampgate.secretName" -}}
{{- default (include "ampgate.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
Whether a component keeps AMPGATE_STATE_DIR on its own PersistentVolumeClaim (a StatefulSet)
rather than an emptyDir (a Deployment): "true" or "". <component>.persistence.enabled wins when
it is a boolean; null (the history default) means "only when the history worker writes SQLite",
i.e. neither secrets.historyDatabaseUrl nor an existingSecret (which may hold one) is set.
Usage: if include "ampgate.persistent" (dict "ctx" $ "component" "gateway")
*/}}
{{- define "ampgate.persistent" -}}
{{- $p := (index .ctx.Values .component).persistence | default dict }}
{{- if kindIs "bool" $p.enabled }}
{{- if $p.enabled }}true{{ end }}
{{- else if not (or .ctx.Values.secrets.historyDatabaseUrl .ctx.Values.existingSecret) }}
{{- printf "true" }}
{{- end }}
{{- end }}

{{/*
A StatefulSet's name: its controller-revision-hash label is "<name>-<10 characters>" and must
fit in 63, so the name stops at 52 (the release part gives way, the component stays).
*/}}
{{- define "ampgate.statefulSetName" -}}
{{- $room := sub 51 (len .component) | int }}
{{- printf "%s-%s" (include "ampgate.fullname" .ctx | trunc $room | trimSuffix "-") .component }}
{{- end }}

{{/* The headless Service a component's StatefulSet names as its serviceName (63 at most). */}}
{{- define "ampgate.headlessName" -}}
{{- $room := sub 53 (len .component) | int }}
{{- printf "%s-%s-headless" (include "ampgate.fullname" .ctx | trunc $room | trimSuffix "-") .component }}
{{- end }}

{{/*
A component's StatefulSet spec (without replicas): one ReadWriteOnce claim per replica mounted
at AMPGATE_STATE_DIR, so replicas never share an outbox, queue or SQLite file.
Usage: include "ampgate.statefulSetSpec" (dict "ctx" $ "component" "webhooks" "podManagementPolicy" "Parallel")
*/}}
{{- define "ampgate.statefulSetSpec" -}}
{{- $v := index .ctx.Values .component }}
{{- $p := $v.persistence }}
{{- $pod := include "ampgate.podArgs" . | fromYaml -}}
revisionHistoryLimit: 5
serviceName: {{ include "ampgate.headlessName" . }}
podManagementPolicy: {{ .podManagementPolicy }}
selector:
  matchLabels:
    {{- include "ampgate.selectorLabels" . | nindent 4 }}
# One pod at a time, the old one gone before its successor mounts the claim.
updateStrategy:
  type: RollingUpdate
# Claims outlive scale-downs and the StatefulSet itself (Kubernetes' default, spelled out): a
# removed replica drains on SIGTERM, and what is still in its outbox or queue is picked up again
# when that ordinal comes back (README.md).
persistentVolumeClaimRetentionPolicy:
  whenScaled: Retain
  whenDeleted: Retain
template:
  {{- include "ampgate.podTemplate" (dict "ctx" .ctx "component" .component "values" $v "secretKeys" $pod.secretKeys "secretRefs" $pod.secretRefs "env" $pod.env "mounts" $pod.mounts "persistent" true) | nindent 2 }}
volumeClaimTemplates:
  - apiVersion: v1
    kind: PersistentVolumeClaim
    metadata:
      name: state
      # Selector labels only: volumeClaimTemplates cannot change after creation, so no
      # version or chart labels that move with every upgrade.
      labels:
        {{- include "ampgate.selectorLabels" . | nindent 8 }}
    spec:
      accessModes:
        {{- toYaml $p.accessModes | nindent 8 }}
      {{- if eq $p.storageClass "-" }}
      storageClassName: ""
      {{- else if $p.storageClass }}
      storageClassName: {{ $p.storageClass | quote }}
      {{- end }}
      resources:
        requests:
          storage: {{ $p.size | quote }}
{{- end }}

{{/*
What a component's pod gets besides its values, the same whichever kind runs it: the secret
keys it may read (least privilege: workers never see upstream secrets) and computed env.
Output: YAML {secretKeys: [...], env: {...}}.
Usage: $pod := include "ampgate.podArgs" (dict "ctx" $ "component" "gateway") | fromYaml
*/}}
{{- define "ampgate.podArgs" -}}
{{- $kafka := list "AMPGATE_KAFKA__SASL_PASSWORD" "AMPGATE_KAFKA__SSL_KEY_PASSWORD" }}
{{- $keys := dict
  "gateway" (concat (list "AMPGATE_CLIENTS" "AMPGATE_PASSPORT__CLIENT_SECRET" "AMPGATE_CPO__CLIENT_SECRET" "AMPGATE_PRICING__API_TOKEN" "AMPGATE_TARIFF_CONTEXTS") $kafka)
  "history" (concat (list "AMPGATE_CLIENTS" "AMPGATE_HISTORY__DATABASE_URL") $kafka)
  "webhooks" (concat (list "AMPGATE_WEBHOOKS__SUBSCRIPTIONS") $kafka) }}
{{- $env := dict }}
{{- $refs := list }}
{{- $mounts := list }}
{{- /* Every component talks to Kafka: the same TLS files everywhere. */}}
{{- with .ctx.Values.kafka.tls }}
{{- if .existingSecret }}
{{- $tls := include "ampgate.tlsMount" (dict "name" "kafka-tls" "tls" . "env" (dict "ca" "AMPGATE_KAFKA__SSL_CA_FILE" "cert" "AMPGATE_KAFKA__SSL_CERT_FILE" "key" "AMPGATE_KAFKA__SSL_KEY_FILE")) | fromYaml }}
{{- $mounts = append $mounts $tls.mount }}
{{- $env = merge $env $tls.env }}
{{- end }}
{{- end }}
{{- if eq .component "gateway" }}
{{- if .ctx.Values.history.enabled }}
{{- $_ := set $env "AMPGATE_HISTORY__URL" (include "ampgate.historyUrl" .ctx) }}
{{- end }}
{{- $_ := set $env "AMPGATE_SHUTDOWN__GRACE_S" (toString .ctx.Values.gateway.shutdown.graceS) }}
{{- if include "ampgate.clusterMode" .ctx }}
{{- $c := .ctx.Values.cluster }}
{{- if $c.existingSecret }}
{{- $refs = append $refs (dict "env" "AMPGATE_CLUSTER__REDIS_URL" "secret" $c.existingSecret "key" $c.existingSecretKey) }}
{{- /* The password may be in the URL: optional in a Secret the chart cannot see into. */}}
{{- $refs = append $refs (dict "env" "AMPGATE_CLUSTER__REDIS_PASSWORD" "secret" $c.existingSecret "key" $c.existingSecretPasswordKey "optional" true) }}
{{- else }}
{{- $refs = append $refs (dict "env" "AMPGATE_CLUSTER__REDIS_URL" "secret" (include "ampgate.fullname" .ctx) "key" "AMPGATE_CLUSTER__REDIS_URL") }}
{{- if $c.redisPassword }}
{{- $refs = append $refs (dict "env" "AMPGATE_CLUSTER__REDIS_PASSWORD" "secret" (include "ampgate.fullname" .ctx) "key" "AMPGATE_CLUSTER__REDIS_PASSWORD" "optional" true) }}
{{- end }}
{{- end }}
{{- with $c.redisUsername }}
{{- $_ := set $env "AMPGATE_CLUSTER__REDIS_USERNAME" . }}
{{- end }}
{{- $_ := set $env "AMPGATE_CLUSTER__KEY_PREFIX" $c.keyPrefix }}
{{- $_ := set $env "AMPGATE_CLUSTER__TIMEOUT_S" (toString $c.timeoutS) }}
{{- $_ := set $env "AMPGATE_CLUSTER__CHECK_HOSTNAME" (toString $c.checkHostname) }}
{{- if $c.tls.existingSecret }}
{{- $tls := include "ampgate.tlsMount" (dict "name" "redis-tls" "tls" $c.tls "env" (dict "ca" "AMPGATE_CLUSTER__CA_FILE" "cert" "AMPGATE_CLUSTER__CERT_FILE" "key" "AMPGATE_CLUSTER__KEY_FILE")) | fromYaml }}
{{- $mounts = append $mounts $tls.mount }}
{{- $env = merge $env $tls.env }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "secretKeys" (get $keys .component) "env" $env "secretRefs" $refs "mounts" $mounts) }}
{{- end }}

{{/*
A TLS Secret mounted read-only at /etc/ampgate/<name>, with fixed file names whatever its keys
(ca.crt, tls.crt, tls.key), and the settings naming those files (env: part -> variable), only
for the keys given (tls.keys: ca, cert, key -> the Secret's key or "").
Output: YAML {mount: {name, secret, mountPath, items: [{key, path}]}, env: {...}}.
Usage: include "ampgate.tlsMount" (dict "name" "kafka-tls" "tls" .Values.kafka.tls
       "env" (dict "ca" "<variable>" "cert" "<variable>" "key" "<variable>"))
*/}}
{{- define "ampgate.tlsMount" -}}
{{- $dir := printf "/etc/ampgate/%s" .name }}
{{- $items := list }}
{{- $env := dict }}
{{- range $part := list "ca" "cert" "key" }}
{{- with get $.tls.keys $part }}
{{- $file := get (dict "ca" "ca.crt" "cert" "tls.crt" "key" "tls.key") $part }}
{{- $items = append $items (dict "key" . "path" $file) }}
{{- $_ := set $env (get $.env $part) (printf "%s/%s" $dir $file) }}
{{- end }}
{{- end }}
{{- toYaml (dict "mount" (dict "name" .name "secret" .tls.existingSecret "mountPath" $dir "items" $items) "env" $env) }}
{{- end }}

{{/* Cluster mode (AMPGATE_CLUSTER__REDIS_URL): "true" or "". */}}
{{- define "ampgate.clusterMode" -}}
{{- if or .Values.cluster.redisUrl .Values.cluster.existingSecret }}true{{ end }}
{{- end }}

{{/*
The gateway's terminationGracePeriodSeconds: the outbox drain (AMPGATE_SHUTDOWN__GRACE_S) plus
a margin, so the kubelet never kills a drain that is still within its time.
*/}}
{{- define "ampgate.gatewayTerminationGrace" -}}
{{- with .Values.gateway.shutdown }}
{{- add (ceil .graceS | int) (ceil .marginS | int) }}
{{- end }}
{{- end }}

{{/*
What a component's pod environment will hold for a name, from the values (config,
<component>.config, <component>.extraEnv): "" when none gives it.
Usage: include "ampgate.componentEnv" (dict "ctx" $ "component" "history" "name" "AMPGATE_...")
*/}}
{{- define "ampgate.componentEnv" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $env := include "ampgate.envTree" (dict "prefix" "AMPGATE" "sep" "_" "tree" $ctx.Values.config) | fromYaml }}
{{- $env = mergeOverwrite $env (include "ampgate.envTree" (dict "prefix" "AMPGATE" "sep" "_" "tree" ($v.config | default dict)) | fromYaml) }}
{{- range $name, $value := ($v.extraEnv | default dict) }}{{ $_ := set $env $name (toString $value) }}{{ end }}
{{- get $env .name }}
{{- end }}

{{/* The same for the gateway. Usage: include "ampgate.gatewayEnv" (dict "ctx" $ "name" "...") */}}
{{- define "ampgate.gatewayEnv" -}}
{{- include "ampgate.componentEnv" (dict "ctx" .ctx "component" "gateway" "name" .name) }}
{{- end }}

{{/*
Refuse at render time what the services would refuse at start-up (the same line, naming the
value to set) and what cannot work. One place, included once (configmap.yaml), first failure wins:
- more than one gateway replica, or the autoscaler, without cluster mode: every replica would poll,
  announce and fetch tokens on its own (DESIGN.md §12);
- several history replicas on SQLite: each would keep its own history;
- the gateway's settings: every upstream's base URL, token URL, client id and secret;
- Kafka security, as KafkaSettings checks it, for every component: a SASL protocol with its
  mechanism, username and password, a mechanism only with a SASL protocol, TLS files only with
  a TLS protocol, a client certificate with its key; Redis TLS (cluster mode) likewise;
- secrets in a settings tree (they would land in a ConfigMap or a pod spec).
*/}}
{{- define "ampgate.validate" -}}
{{- $v := .Values }}
{{- if not (include "ampgate.clusterMode" .) }}
{{- if $v.gateway.autoscaling.enabled }}
{{- fail "gateway.autoscaling.enabled needs cluster mode: set cluster.redisUrl (or cluster.existingSecret) so the replicas act as one gateway, or turn the autoscaler off" }}
{{- else if gt (int $v.gateway.replicaCount) 1 }}
{{- fail (printf "gateway.replicaCount %d needs cluster mode: set cluster.redisUrl (or cluster.existingSecret) so the replicas act as one gateway, or run 1 replica" (int $v.gateway.replicaCount)) }}
{{- end }}
{{- end }}
{{- if and $v.cluster.redisUrl $v.existingSecret (not $v.cluster.existingSecret) }}
{{- fail "cluster.redisUrl goes into the chart's Secret, which existingSecret replaces: put AMPGATE_CLUSTER__REDIS_URL into your Secret and set cluster.existingSecret to its name" }}
{{- end }}
{{- if and $v.cluster.redisPassword $v.existingSecret (not $v.cluster.existingSecret) }}
{{- fail "cluster.redisPassword goes into the chart's Secret, which existingSecret replaces: put AMPGATE_CLUSTER__REDIS_PASSWORD into your Secret and set cluster.existingSecret to its name" }}
{{- end }}
{{- include "ampgate.securityChecks" . }}
{{- if $v.history.enabled }}
{{- include "ampgate.historyChecks" . }}
{{- end }}
{{- if include "ampgate.gatewayEnv" (dict "ctx" . "name" "AMPGATE_SHUTDOWN__GRACE_S") }}
{{- fail "AMPGATE_SHUTDOWN__GRACE_S comes from gateway.shutdown.graceS (the pod's termination grace period follows it): set that instead" }}
{{- end }}
{{- $secret := include "ampgate.secretData" . | fromYaml }}
{{- range $group := list "passport" "cpo" "pricing" }}
{{- $fields := list "baseUrl" "tokenUrl" "clientId" }}
{{- if eq $group "pricing" }}{{ $fields = list "baseUrl" }}{{ end }}
{{- range $field := $fields }}
{{- $name := printf "AMPGATE_%s__%s" (upper $group) ($field | snakecase | upper) }}
{{- $_ := required (printf "%s is required: set gateway.config.%s.%s" $name $group $field) (include "ampgate.gatewayEnv" (dict "ctx" $ "name" $name)) }}
{{- end }}
{{- if not $v.existingSecret }}
{{- $key := dict "passport" "passportClientSecret" "cpo" "cpoClientSecret" "pricing" "pricingApiToken" }}
{{- $name := ternary "AMPGATE_PRICING__API_TOKEN" (printf "AMPGATE_%s__CLIENT_SECRET" (upper $group)) (eq $group "pricing") }}
{{- $_ := required (printf "%s is required: set secrets.%s (or existingSecret)" $name (get $key $group)) (or (get $secret $name) (include "ampgate.gatewayEnv" (dict "ctx" $ "name" $name))) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Kafka and Redis security that cannot work (KafkaSettings' and RedisTlsSettings' own checks, at
render time, naming the values to set). Components that are off are not checked.
*/}}
{{- define "ampgate.securityChecks" -}}
{{- $v := .Values }}
{{- $secret := include "ampgate.secretData" . | fromYaml }}
{{- range $component := list "gateway" "history" "webhooks" }}
{{- if or (eq $component "gateway") (index $v $component).enabled }}
{{- range $name := list "AMPGATE_KAFKA__SASL_PASSWORD" "AMPGATE_KAFKA__SSL_KEY_PASSWORD" "AMPGATE_CLUSTER__REDIS_PASSWORD" }}
{{- $tree := include "ampgate.envTree" (dict "prefix" "AMPGATE" "sep" "_" "tree" $v.config) | fromYaml }}
{{- $tree = merge $tree (include "ampgate.envTree" (dict "prefix" "AMPGATE" "sep" "_" "tree" ((index $v $component).config | default dict)) | fromYaml) }}
{{- if hasKey $tree $name }}
{{- fail (printf "%s is a secret and would land in a ConfigMap or pod spec: set it in secrets (or existingSecret), not in a config tree" $name) }}
{{- end }}
{{- end }}
{{- $protocol := include "ampgate.componentEnv" (dict "ctx" $ "component" $component "name" "AMPGATE_KAFKA__SECURITY_PROTOCOL") | default "PLAINTEXT" }}
{{- $mechanism := include "ampgate.componentEnv" (dict "ctx" $ "component" $component "name" "AMPGATE_KAFKA__SASL_MECHANISM") }}
{{- if hasPrefix "SASL_" $protocol }}
{{- $_ := required (printf "config.kafka.securityProtocol %s needs config.kafka.saslMechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $protocol) $mechanism }}
{{- $_ := required (printf "config.kafka.securityProtocol %s needs config.kafka.saslUsername" $protocol) (include "ampgate.componentEnv" (dict "ctx" $ "component" $component "name" "AMPGATE_KAFKA__SASL_USERNAME")) }}
{{- if not $v.existingSecret }}
{{- $_ := required (printf "config.kafka.securityProtocol %s needs AMPGATE_KAFKA__SASL_PASSWORD: set secrets.kafkaSaslPassword (or existingSecret)" $protocol) (or (get $secret "AMPGATE_KAFKA__SASL_PASSWORD") (include "ampgate.componentEnv" (dict "ctx" $ "component" $component "name" "AMPGATE_KAFKA__SASL_PASSWORD"))) }}
{{- end }}
{{- else if $mechanism }}
{{- fail "config.kafka.saslMechanism needs config.kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL" }}
{{- end }}
{{- if and $v.kafka.tls.existingSecret (not (has $protocol (list "SSL" "SASL_SSL"))) }}
{{- fail (printf "kafka.tls.existingSecret needs config.kafka.securityProtocol SSL or SASL_SSL (%s sends no TLS)" $protocol) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.kafka.tls }}
{{- if and .existingSecret (ne (not .keys.cert) (not .keys.key)) }}
{{- fail "kafka.tls.keys.cert and kafka.tls.keys.key go together (AMPGATE_KAFKA__SSL_CERT_FILE and AMPGATE_KAFKA__SSL_KEY_FILE)" }}
{{- end }}
{{- end }}
{{- with $v.cluster }}
{{- if not (include "ampgate.clusterMode" $) }}
{{- range $key := list "redisUsername" "redisPassword" }}
{{- if get $v.cluster $key }}
{{- fail (printf "cluster.%s needs cluster mode: set cluster.redisUrl (or cluster.existingSecret)" $key) }}
{{- end }}
{{- end }}
{{- if .tls.existingSecret }}
{{- fail "cluster.tls.existingSecret needs cluster mode: set cluster.redisUrl (or cluster.existingSecret)" }}
{{- end }}
{{- end }}
{{- if and .tls.existingSecret .redisUrl (not (hasPrefix "rediss://" .redisUrl)) }}
{{- fail "cluster.tls.existingSecret needs a rediss:// cluster.redisUrl (redis:// sends no TLS)" }}
{{- end }}
{{- if and .tls.existingSecret (ne (not .tls.keys.cert) (not .tls.keys.key)) }}
{{- fail "cluster.tls.keys.cert and cluster.tls.keys.key go together (AMPGATE_CLUSTER__CERT_FILE and AMPGATE_CLUSTER__KEY_FILE)" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuse what cannot work: several history replicas on SQLite would each keep their own
database and answer differently (the chart can only tell when no existingSecret is used).
*/}}
{{- define "ampgate.historyChecks" -}}
{{- if and (gt (int .Values.history.replicaCount) 1) (not .Values.secrets.historyDatabaseUrl) (not .Values.existingSecret) }}
{{- fail "history.replicaCount > 1 needs a PostgreSQL secrets.historyDatabaseUrl: SQLite replicas would each keep their own history" }}
{{- end }}
{{- end }}

{{- define "ampgate.historyUrl" -}}
{{- printf "http://%s:%v" (include "ampgate.componentName" (dict "ctx" . "component" "history")) .Values.history.service.port }}
{{- end }}

{{/*
Flatten a camelCase settings tree into AMPGATE_* variables (DESIGN.md §8):
{kafka: {bootstrapServers: x}} -> AMPGATE_KAFKA__BOOTSTRAP_SERVERS: "x".
Maps nest, lists become JSON, "" and null are left out (the service's default applies),
whole numbers print without an exponent. Output: a YAML map of name -> string.
Usage: include "ampgate.envTree" (dict "prefix" "AMPGATE" "sep" "_" "tree" .Values.config)
*/}}
{{- define "ampgate.envTree" -}}
{{- $prefix := .prefix }}
{{- $sep := .sep }}
{{- range $key, $value := .tree }}
{{- $name := printf "%s%s%s" $prefix $sep ($key | snakecase | upper) }}
{{- if kindIs "map" $value }}
{{- include "ampgate.envTree" (dict "prefix" $name "sep" "__" "tree" $value) }}
{{- else if kindIs "slice" $value }}
{{ $name }}: {{ toJson $value | quote }}
{{- else if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}
{{ $name }}: {{ int64 $value | toString | quote }}
{{- else }}
{{ $name }}: {{ toString $value | quote }}
{{- end }}
{{- else if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{ $name }}: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Secret's data when the chart renders it: env name -> value, empty ones left out so a
service never sees a half-configured upstream. Maps keyed by name become the JSON lists
the settings expect.
*/}}
{{- define "ampgate.secretData" -}}
{{- $s := .Values.secrets }}
{{- $data := dict }}
{{- if $s.passportClientSecret }}{{ $_ := set $data "AMPGATE_PASSPORT__CLIENT_SECRET" $s.passportClientSecret }}{{ end }}
{{- if $s.cpoClientSecret }}{{ $_ := set $data "AMPGATE_CPO__CLIENT_SECRET" $s.cpoClientSecret }}{{ end }}
{{- if $s.pricingApiToken }}{{ $_ := set $data "AMPGATE_PRICING__API_TOKEN" $s.pricingApiToken }}{{ end }}
{{- if $s.historyDatabaseUrl }}{{ $_ := set $data "AMPGATE_HISTORY__DATABASE_URL" $s.historyDatabaseUrl }}{{ end }}
{{- if and .Values.cluster.redisUrl (not .Values.cluster.existingSecret) }}{{ $_ := set $data "AMPGATE_CLUSTER__REDIS_URL" .Values.cluster.redisUrl }}{{ end }}
{{- if and .Values.cluster.redisPassword (not .Values.cluster.existingSecret) }}{{ $_ := set $data "AMPGATE_CLUSTER__REDIS_PASSWORD" .Values.cluster.redisPassword }}{{ end }}
{{- if $s.kafkaSaslPassword }}{{ $_ := set $data "AMPGATE_KAFKA__SASL_PASSWORD" $s.kafkaSaslPassword }}{{ end }}
{{- if $s.kafkaSslKeyPassword }}{{ $_ := set $data "AMPGATE_KAFKA__SSL_KEY_PASSWORD" $s.kafkaSslKeyPassword }}{{ end }}
{{- if $s.clients }}
{{- $list := list }}
{{- range $name, $c := $s.clients }}
{{- $list = append $list (dict "name" $name "key_sha256" $c.keySha256 "scopes" $c.scopes) }}
{{- end }}
{{- $_ := set $data "AMPGATE_CLIENTS" (toJson $list) }}
{{- end }}
{{- if $s.tariffContexts }}
{{- $list := list }}
{{- range $name, $t := $s.tariffContexts }}
{{- $item := dict "name" $name }}
{{- with $t.tagId }}{{ $_ := set $item "tag_id" . }}{{ end }}
{{- with $t.emaid }}{{ $_ := set $item "emaid" . }}{{ end }}
{{- with $t.authenticationUuid }}{{ $_ := set $item "authentication_uuid" . }}{{ end }}
{{- $list = append $list $item }}
{{- end }}
{{- $_ := set $data "AMPGATE_TARIFF_CONTEXTS" (toJson $list) }}
{{- end }}
{{- if $s.webhookSubscriptions }}
{{- $list := list }}
{{- range $name, $w := $s.webhookSubscriptions }}
{{- $item := dict "name" $name "url" $w.url "events" $w.events "secret" $w.secret }}
{{- with $w.entityIds }}{{ $_ := set $item "entity_ids" . }}{{ end }}
{{- $list = append $list $item }}
{{- end }}
{{- $_ := set $data "AMPGATE_WEBHOOKS__SUBSCRIPTIONS" (toJson $list) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
The pod template every component shares. Each component gets only the secret keys it uses
(least privilege); its own settings and extraEnv override the shared ConfigMap.
Usage: include "ampgate.podTemplate" (dict "ctx" $ "component" "gateway" "values" .Values.gateway
       "secretKeys" (list ...) "env" (dict ...) "mounts" (list ...) ["persistent" true])
"mounts": read-only Secret volumes (ampgate.tlsMount).
"persistent": the state volume comes from a StatefulSet's claim template, not an emptyDir.
*/}}
{{- define "ampgate.podTemplate" -}}
{{- $ctx := .ctx }}
{{- $v := .values }}
{{- /* precedence: extraEnv > listen address and state dir > computed env > component config */}}
{{- $env := include "ampgate.envTree" (dict "prefix" "AMPGATE" "sep" "_" "tree" ($v.config | default dict)) | fromYaml }}
{{- $env = mergeOverwrite $env (.env | default dict) }}
{{- $env = mergeOverwrite $env (dict "AMPGATE_HTTP__HOST" "0.0.0.0" "AMPGATE_HTTP__PORT" (toString $ctx.Values.containerPort) "AMPGATE_STATE_DIR" "/var/lib/ampgate") }}
{{- range $name, $value := ($v.extraEnv | default dict) }}{{ $_ := set $env $name (toString $value) }}{{ end }}
{{- /* the pod template starts here */ -}}
metadata:
  labels:
    {{- include "ampgate.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
  annotations:
    checksum/config: {{ include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | sha256sum }}
    {{- if not $ctx.Values.existingSecret }}
    checksum/secret: {{ include "ampgate.secretData" $ctx | sha256sum }}
    {{- end }}
    {{- /* Annotation scraping only without a ServiceMonitor: never both (double scrape). */}}
    {{- if and $ctx.Values.metrics.podAnnotations (not $ctx.Values.serviceMonitor.enabled) }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $ctx.Values.containerPort | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $ctx.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ampgate.serviceAccountName" $ctx }}
  automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountToken }}
  {{- with $ctx.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range $name, $on := . }}
    {{- if $on }}
    - name: {{ $name }}
    {{- end }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- toYaml $ctx.Values.podSecurityContext | nindent 4 }}
  {{- if eq .component "gateway" }}
  # gateway.shutdown: the outbox drain (AMPGATE_SHUTDOWN__GRACE_S) plus a margin.
  terminationGracePeriodSeconds: {{ include "ampgate.gatewayTerminationGrace" $ctx }}
  {{- else }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | default 30 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "ampgate.image" $ctx }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      args: [{{ .component | quote }}]
      ports:
        - name: http
          containerPort: {{ $ctx.Values.containerPort }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "ampgate.fullname" $ctx }}
      env:
        {{- range $name := keys $env | sortAlpha }}
        - name: {{ $name }}
          value: {{ get $env $name | quote }}
        {{- end }}
        {{- range $key := .secretKeys }}
        - name: {{ $key }}
          valueFrom:
            secretKeyRef:
              name: {{ include "ampgate.secretName" $ctx }}
              key: {{ $key }}
              optional: true
        {{- end }}
        {{- /* Settings that must be there once asked for (the Redis URL): not optional. */}}
        {{- range $ref := .secretRefs }}
        - name: {{ $ref.env }}
          valueFrom:
            secretKeyRef:
              name: {{ $ref.secret }}
              key: {{ $ref.key }}
              {{- if $ref.optional }}
              optional: true
              {{- end }}
        {{- end }}
      {{- with $ctx.Values.probes }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml .readiness | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- toYaml $ctx.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        # AMPGATE_STATE_DIR: outbox, webhook queue, SQLite files. The root filesystem is read-only.
        - name: state
          mountPath: /var/lib/ampgate
        - name: tmp
          mountPath: /tmp
        {{- /* TLS files (kafka.tls, cluster.tls): the settings name these paths. */}}
        {{- range $m := .mounts }}
        - name: {{ $m.name }}
          mountPath: {{ $m.mountPath }}
          readOnly: true
        {{- end }}
  volumes:
    {{- if not .persistent }}
    # Without persistence the state goes with the pod (a StatefulSet's claim template is "state").
    - name: state
      emptyDir:
        {{- with $ctx.Values.stateDir.medium }}
        medium: {{ . }}
        {{- end }}
        sizeLimit: {{ $ctx.Values.stateDir.sizeLimit }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- range $m := .mounts }}
    - name: {{ $m.name }}
      secret:
        secretName: {{ $m.secret }}
        # Only the keys named in the values, under fixed file names. Owner root, group fsGroup
        # (podSecurityContext, 10001: the image's group), so only ampgate reads the key.
        defaultMode: 0440
        items:
          {{- toYaml $m.items | nindent 10 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
NetworkPolicy ports: a comma-separated value plus the ports of the given addresses
("host:port" or URLs; a URL without a port gets its scheme's), deduplicated and sorted.
Output: a JSON list of ints. Usage: include "ampgate.ports" (dict "ports" "9092" "addresses" (list ...))
*/}}
{{- define "ampgate.ports" -}}
{{- $ports := list }}
{{- range $p := splitList "," (toString .ports) }}
{{- if trim $p }}{{ $ports = append $ports (trim $p | int) }}{{ end }}
{{- end }}
{{- range $a := .addresses }}
{{- $a = trim (toString $a) }}
{{- if $a }}
{{- if contains "://" $a }}
{{- $u := urlParse $a }}
{{- $host := $u.host }}
{{- if regexMatch ":[0-9]+$" $host }}
{{- $ports = append $ports (regexFind "[0-9]+$" $host | int) }}
{{- else if eq $u.scheme "https" }}{{ $ports = append $ports 443 }}
{{- else if eq $u.scheme "http" }}{{ $ports = append $ports 80 }}
{{- end }}
{{- else if regexMatch ":[0-9]+$" $a }}
{{- $ports = append $ports (regexFind "[0-9]+$" $a | int) }}
{{- end }}
{{- end }}
{{- end }}
{{- $ports | uniq | sortAlpha | toJson }}
{{- end }}
