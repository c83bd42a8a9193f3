{{/* Names and labels only: every other snippet lives in the template that uses it. */}}

{{/* Prefix of every object's name: the release name, unless fullnameOverride. */}}
{{- define "shoal.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* A component's name: (dict "ctx" $ "component" "redis") → "<fullname>-redis". */}}
{{- define "shoal.componentName" -}}
{{- printf "%s-%s" (include "shoal.fullname" .ctx) .component -}}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "shoal.serviceAccountName" -}}
{{- default (include "shoal.componentName" (dict "ctx" . "component" "operator")) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Selector labels of a component: (dict "ctx" $ "component" "operator"). Never changes. */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of a component's objects: (dict "ctx" $ "component" "operator"). */}}
{{- define "shoal.labels" -}}
{{ include "shoal.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: shoal
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version }}
{{- end -}}
