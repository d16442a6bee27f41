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
       "secretKeys" (list ...) "env" (dict ...))
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
    {{- if $ctx.Values.metrics.podAnnotations }}
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
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | default 30 }}
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
        - name: state
          mountPath: /var/lib/ampgate
        - name: tmp
          mountPath: /tmp
  volumes:
    # AMPGATE_STATE_DIR: the gateway's outbox and SQLite files. The root filesystem is read-only.
    - name: state
      emptyDir:
        {{- with $ctx.Values.stateDir.medium }}
        medium: {{ . }}
        {{- end }}
        sizeLimit: {{ $ctx.Values.stateDir.sizeLimit }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
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
