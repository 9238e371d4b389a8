{{/* The name of everything the release makes: the release name, prefixed with the
chart's unless it already holds it (a release "meshlet" makes "meshlet"). */}}
{{- define "meshlet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Chart.Name .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The MutatingWebhookConfiguration (cluster-scoped, so named per release); its
Secret and Lease are named after it, as the control plane's --webhook-configuration. */}}
{{- define "meshlet.webhookName" -}}
{{- printf "%s-injector" (include "meshlet.fullname" .) -}}
{{- end -}}

{{- define "meshlet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "meshlet.labels" -}}
{{ include "meshlet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "meshlet.image" -}}
{{- printf "%s:%s" .repository (.tag | default $.appVersion) -}}
{{- end -}}

{{- define "meshlet.controlPlaneImage" -}}
{{- include "meshlet.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.controlPlane.image) -}}
{{- end -}}

{{- define "meshlet.sidecarImage" -}}
{{- include "meshlet.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.sidecar.image) -}}
{{- end -}}

{{/* The host the API server calls in url mode, for the serving certificate. */}}
{{- define "meshlet.webhookUrlHost" -}}
{{- (urlParse .Values.webhook.url).hostname -}}
{{- end -}}
