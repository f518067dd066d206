// `azd up` deploys this: a resource group and everything in it (modules/resources.bicep).
// The batch function's Event Grid subscription is created after the code is deployed
// (eventgrid.bicep, run by azure.yaml's postdeploy hook): its webhook needs the
// blobs_extension key, which the Functions host creates when the blob trigger first loads.
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name: names the resource group and seeds resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource.')
param location string

@description('INFER_BACKENDS: a JSON list of model backends (docs/backends.md).')
param inferBackends string = '[]'

@description('Other INFER_* app settings, e.g. {"INFER_LIMITS": "[...]"} (README settings table).')
param inferSettings object = {}

@description('Most instances the app scales to (Flex Consumption): bounds the load on the GPU endpoint.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Instances kept warm for the HTTP functions (0: scale to zero).')
@minValue(0)
param alwaysReadyHttp int = 0

@description('Memory of each instance, in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Resource IDs of Azure OpenAI accounts the app calls (Cognitive Services OpenAI User on each).')
param azureOpenAiResourceIds array = []

@description('Resource IDs of Azure ML online endpoints the app calls (AzureML Data Scientist on each).')
param azureMlEndpointIds array = []

@description('Autoscale for Azure ML online deployments: [{deploymentId, location?, minInstances?, maxInstances?, defaultInstances?, requestsPerMinutePerInstance?}] (docs/capacity.md).')
param azureMlAutoscale array = []

@description('Create an Azure Managed Redis (Entra ID access for the app) and set INFER_STATE_URL to it.')
param enableRedis bool = false

@description('Resource ID of an action group the alert rules notify (empty: alerts without actions).')
param alertActionGroupId string = ''

var tags = { 'azd-env-name': environmentName }

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module resources 'modules/resources.bicep' = {
  name: 'resources'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: toLower(uniqueString(subscription().id, environmentName, location))
    inferBackends: inferBackends
    inferSettings: inferSettings
    maximumInstanceCount: maximumInstanceCount
    alwaysReadyHttp: alwaysReadyHttp
    instanceMemoryMB: instanceMemoryMB
    enableRedis: enableRedis
    alertActionGroupId: alertActionGroupId
  }
}

module openAiRoles 'modules/openai-role.bicep' = [for id in azureOpenAiResourceIds: {
  name: 'openai-role-${uniqueString(id)}'
  scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
  params: {
    accountName: last(split(id, '/'))
    principalId: resources.outputs.identityPrincipalId
  }
}]

module mlRoles 'modules/ml-endpoint-role.bicep' = [for id in azureMlEndpointIds: {
  name: 'ml-role-${uniqueString(id)}'
  scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
  params: {
    workspaceName: split(id, '/')[8]
    endpointName: last(split(id, '/'))
    principalId: resources.outputs.identityPrincipalId
  }
}]

module mlAutoscale 'modules/ml-autoscale.bicep' = [for item in azureMlAutoscale: {
  name: 'ml-autoscale-${uniqueString(item.deploymentId)}'
  scope: resourceGroup(split(item.deploymentId, '/')[2], split(item.deploymentId, '/')[4])
  params: {
    deploymentId: item.deploymentId
    location: item.?location ?? location
    minInstances: item.?minInstances ?? 1
    maxInstances: item.?maxInstances ?? 4
    defaultInstances: item.?defaultInstances ?? 1
    requestsPerMinutePerInstance: item.?requestsPerMinutePerInstance ?? 60
  }
}]

output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = resources.outputs.functionAppName
output AZURE_STORAGE_ACCOUNT_NAME string = resources.outputs.storageAccountName
output AZURE_EVENTGRID_SYSTEM_TOPIC string = resources.outputs.systemTopicName
output AZURE_CLIENT_ID string = resources.outputs.identityClientId
output API_BASE_URL string = 'https://${resources.outputs.functionAppHost}/api/v1'
