// Autoscale for one Azure ML online deployment (Azure Monitor autoscale setting): instances
// between minimum and maximum, out on requests per minute per instance (the endpoint's
// RequestsPerMinute metric), in when traffic falls, each with its cooldown. Deployed in the
// deployment's resource group; the deployer needs microsoft.insights/autoscalesettings/write.
// Managed online deployments keep at least one instance (docs/capacity.md).
param deploymentId string
param location string
param minInstances int = 1
param maxInstances int = 4
param defaultInstances int = 1
param requestsPerMinutePerInstance int = 60
param scaleOutCooldown string = 'PT5M'
param scaleInCooldown string = 'PT15M'

var endpointId = join(take(split(deploymentId, '/'), 11), '/')

resource autoscale 'Microsoft.Insights/autoscalesettings@2022-10-01' = {
  name: 'autoscale-${last(split(deploymentId, '/'))}-${uniqueString(deploymentId)}'
  location: location
  properties: {
    enabled: true
    targetResourceUri: deploymentId
    profiles: [
      {
        name: 'requests'
        capacity: {
          minimum: string(minInstances)
          maximum: string(maxInstances)
          default: string(defaultInstances)
        }
        rules: [
          {
            metricTrigger: {
              metricName: 'RequestsPerMinute'
              metricResourceUri: endpointId
              timeGrain: 'PT1M'
              statistic: 'Average'
              timeWindow: 'PT5M'
              timeAggregation: 'Average'
              operator: 'GreaterThan'
              threshold: requestsPerMinutePerInstance
            }
            scaleAction: {
              direction: 'Increase'
              type: 'ChangeCount'
              value: '1'
              cooldown: scaleOutCooldown
            }
          }
          {
            metricTrigger: {
              metricName: 'RequestsPerMinute'
              metricResourceUri: endpointId
              timeGrain: 'PT1M'
              statistic: 'Average'
              timeWindow: 'PT15M'
              timeAggregation: 'Average'
              operator: 'LessThan'
              threshold: requestsPerMinutePerInstance / 4
            }
            scaleAction: {
              direction: 'Decrease'
              type: 'ChangeCount'
              value: '1'
              cooldown: scaleInCooldown
            }
          }
        ]
      }
    ]
  }
}
