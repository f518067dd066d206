// Everything the function app needs, in one resource group, secure by default:
// one user-assigned identity for every outbound call (host storage, deployment storage,
// Application Insights, model backends, Redis); storage with shared keys off; role
// assignments scoped to the one resource each; no secret in any setting.
// tests/deploy/test_bicep.py holds this file against the code (queues, containers, settings,
// roles) and runs checkov over it.

param location string
param tags object
param resourceToken string
param inferBackends string
param inferSettings object
param maximumInstanceCount int
param alwaysReadyHttp int
param instanceMemoryMB int
param enableRedis bool

@description('An action group the alert rules notify (empty: alerts without actions).')
param alertActionGroupId string = ''

// What the functions use (the triggers of function_app.py, shared/jobs and shared/batch).
var queueNames = [
  'inference-requests'
  'inference-requests-poison'
  'batch-shards'
  'batch-shards-poison'
]
var containerNames = [
  'batch-in'
  'batch-out'
  'batch-work'
  'jobs'
]
var deploymentContainer = 'app-package'
var appName = 'func-${resourceToken}'

// Built-in role definition ids (the same in every tenant).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${resourceToken}'
  location: location
  tags: tags
}

// ------------------------------------------------------------------------------ storage
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_43: the name is st + uniqueString(...), 15 lowercase letters and digits, which checkov cannot evaluate
  // checkov:skip=CKV_AZURE_35: Flex Consumption without a VNet reaches its storage over the public endpoint; shared keys are off, so only the identity of the app (RBAC) gets in
  // checkov:skip=CKV_AZURE_206: locally redundant by default to keep a first deployment cheap; pass a ZRS/GRS SKU for production
  // checkov:skip=CKV_AZURE_59: as CKV_AZURE_35: public network access with Entra-only (RBAC) authorization
  name: 'st${resourceToken}'
  // checkov:skip=CKV_AZURE_33: queue service logging goes to the diagnostic settings of the account, chosen by the operator
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true }
        queue: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for name in concat(containerNames, [deploymentContainer]): {
  parent: blobService
  name: name
  properties: { publicAccess: 'None' }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in queueNames: {
  parent: queueService
  name: name
}]

// The blob trigger (source EventGrid) is fed by this topic; eventgrid.bicep subscribes the
// batch function to it once the code is deployed.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2024-06-01-preview' = {
  name: 'evgt-${resourceToken}'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// ------------------------------------------------------------------- monitoring
resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: {
    retentionInDays: 30
    sku: { name: 'PerGB2018' }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true // telemetry only with an Entra token (the app's identity)
  }
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, 'serverless-inference-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Serverless inference'
    category: 'workbook'
    sourceId: appInsights.id
    serializedData: loadTextContent('../../docs/dashboards/azure-workbook.json')
  }
}

// ------------------------------------------------------------------- function app
resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales instances itself; a minimum count does not apply
  // checkov:skip=CKV_AZURE_225: zone redundancy is a Premium/Dedicated plan setting, not of Flex Consumption
  // checkov:skip=CKV_AZURE_211: Flex Consumption (FC1) has no SKU tiers to choose from
  name: 'plan-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

var baseSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
  AZURE_CLIENT_ID: identity.properties.clientId
  PYTHON_ENABLE_INIT_INDEXING: '1'
  INFER_BACKENDS: inferBackends
  INFER_PROBE_SCHEDULE: '0 */5 * * * *'
  INFER_LOG_PROMPTS: 'false'
}
var redisSettings = enableRedis ? {
  INFER_STATE_URL: 'rediss://${redis.properties.hostName}:10000'
  INFER_STATE_AUTH: 'entra'
  INFER_STATE_CLIENT_ID: identity.properties.clientId
} : {}
var settings = union(baseSettings, redisSettings, inferSettings)

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_212: Flex Consumption adds instances itself (alwaysReady keeps some warm); a fixed minimum does not apply
  // checkov:skip=CKV_AZURE_213: the platform health check (instance replacement) is not a Flex Consumption feature; /api/healthz and /api/readyz serve probes
  // checkov:skip=CKV_AZURE_56: App Service authentication would sit in front of the OpenAI-compatible API; callers are checked by function keys, INFER_API_KEYS or INFER_JWT instead
  // checkov:skip=CKV_AZURE_17: client certificates are not how OpenAI SDK callers authenticate
  // checkov:skip=CKV_AZURE_222: public network access: the API is meant to be reached by its callers; put it behind a VNet integration or Front Door for a private one
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for item in items(settings): { name: item.key, value: item.value }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        alwaysReady: alwaysReadyHttp > 0 ? [{ name: 'http', instanceCount: alwaysReadyHttp }] : []
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No publishing with basic (user name and password) credentials: deployments use Entra ID.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: { allow: false }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: { allow: false }
}

// ------------------------------------------------------------------- roles (least privilege)
// Host storage (leases, keys, timers), the job store and batch files, and the deployment
// package: blob data; the queue triggers, their poison queues and the jobs API: queue data.
resource blobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

resource queueRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}

// Telemetry with Entra ID auth (local auth is off on the component).
resource telemetryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

// ------------------------------------------------------------------- Redis (optional)
resource redis 'Microsoft.Cache/redisEnterprise@2025-04-01' = if (enableRedis) {
  name: 'redis-${resourceToken}'
  location: location
  tags: tags
  sku: { name: 'Balanced_B0' }
  properties: {
    minimumTlsVersion: '1.2'
  }
}

resource redisDb 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' = if (enableRedis) {
  parent: redis
  name: 'default'
  properties: {
    clientProtocol: 'Encrypted'
    port: 10000
    clusteringPolicy: 'OSSCluster'
    evictionPolicy: 'NoEviction' // counters and limits must never be evicted
    accessKeysAuthentication: 'Disabled' // Entra ID only
  }
}

resource redisAccess 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-04-01' = if (enableRedis) {
  parent: redisDb
  name: 'functionapp'
  properties: {
    accessPolicyName: 'default'
    user: { objectId: identity.properties.principalId }
  }
}

// ------------------------------------------------------------------- alerts
// The same conditions as the AWS alarms in template.yaml, as log queries on Application
// Insights (requests, exceptions, traces and the metrics of the functions).
var alerts = [
  {
    name: 'http-5xx-rate'
    description: 'More than 5% of HTTP requests answered 5xx over 5 minutes'
    severity: 2
    query: 'requests | summarize total = count(), failed = countif(toint(resultCode) >= 500) | where total > 0 and failed * 100.0 / total > 5'
  }
  {
    name: 'function-failures'
    description: 'Function executions failed (unhandled errors) more than 5 times in 5 minutes'
    severity: 2
    query: 'requests | where success == false and isempty(customDimensions["HttpMethod"]) | summarize failures = count() | where failures > 5'
  }
  {
    name: 'backend-throttles'
    description: 'Model endpoints or caller limits answered 429 (infer.throttles) more than 10 times in 5 minutes'
    severity: 3
    query: 'customMetrics | where name == "infer.throttles" | summarize throttles = sum(valueSum) | where throttles > 10'
  }
  {
    name: 'poison-messages'
    description: 'A queue message (a job or a batch shard) was moved to its poison queue'
    severity: 2
    query: 'traces | where message has "Moving message to queue" and message has "-poison" | summarize moved = count() | where moved > 0'
  }
  {
    name: 'limits-fail-open'
    description: 'Caller limits failed open (the shared state store was unreachable)'
    severity: 2
    query: 'customMetrics | where name == "infer.limit.refusals" and tostring(customDimensions["infer.limit"]) == "fail_open" | summarize n = sum(valueSum) | where n > 0'
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in alerts: {
  name: 'alert-${alert.name}-${resourceToken}'
  location: location
  tags: tags
  properties: {
    description: alert.description
    severity: alert.severity
    enabled: true
    scopes: [appInsights.id]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: alert.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
    actions: empty(alertActionGroupId) ? {} : { actionGroups: [alertActionGroupId] }
    autoMitigate: true
  }
}]

output identityPrincipalId string = identity.properties.principalId
output identityClientId string = identity.properties.clientId
output functionAppName string = functionApp.name
output functionAppHost string = functionApp.properties.defaultHostName
output storageAccountName string = storage.name
output systemTopicName string = systemTopic.name
